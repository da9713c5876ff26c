//! Instance login's child processes: a command run in a live instance's working directory with
//! the environment fngate gave the instance, on a fresh PTY (interactive) or on pipes. The child
//! leads its own process group (or session, with a PTY); dropping the `SessionChild` kills the
//! whole group, and the kernel kills it if the gateway dies.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use tokio::io::unix::AsyncFd;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

/// Environment variables, in the order they are set (a later one wins).
pub type ExecEnv = Vec<(OsString, OsString)>;

/// Where and with what environment an instance runs: what a login session runs with.
#[derive(Debug)]
pub struct ExecContext {
    pub cwd: PathBuf,
    pub env: ExecEnv,
}

/// How a session talks to its child.
#[derive(Debug)]
pub enum SessionIo {
    /// Interactive: one PTY master carries input and output (stderr included).
    Pty(Pty),
    /// Non-interactive: stdin, stdout and stderr on pipes.
    Pipes {
        stdin: ChildStdin,
        stdout: ChildStdout,
        stderr: ChildStderr,
    },
}

/// A running login command. Dropping it kills the command's whole process group.
#[derive(Debug)]
pub struct SessionChild {
    pub child: Child,
    pub io: Option<SessionIo>,
    pgid: u32,
}

impl Drop for SessionChild {
    fn drop(&mut self) {
        if self.pgid != 0 {
            super::signal_group(self.pgid, rustix::process::Signal::KILL);
        }
    }
}

impl ExecContext {
    /// Starts `command` (the instance's `$SHELL`, else `/bin/sh`, when empty). `pty` is the
    /// terminal size (columns, rows) for an interactive session; `term` its `TERM`.
    pub fn spawn(
        &self,
        command: &[String],
        pty: Option<(u16, u16)>,
        term: Option<&str>,
    ) -> io::Result<SessionChild> {
        let (program, args) = match command.split_first() {
            Some((p, rest)) => (OsString::from(p), rest),
            None => (self.shell(), &[][..]),
        };
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(&self.cwd)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .kill_on_drop(true);
        if let Some((cols, rows)) = pty {
            cmd.env("TERM", term.unwrap_or("xterm-256color"));
            let (master, slave) = open_pty(cols, rows)?;
            cmd.stdin(Stdio::from(slave.try_clone()?))
                .stdout(Stdio::from(slave.try_clone()?))
                .stderr(Stdio::from(slave));
            // setsid makes it a session (and group) leader with the PTY as its terminal.
            super::die_with_gateway(&mut cmd, true);
            let child = cmd.spawn()?;
            // The parent's copies of the slave close with `cmd`, so EOF on the master follows
            // the child's exit.
            drop(cmd);
            return Ok(SessionChild {
                pgid: child.id().unwrap_or(0),
                child,
                io: Some(SessionIo::Pty(Pty::new(master)?)),
            });
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        super::die_with_gateway(&mut cmd, false);
        let mut child = cmd.spawn()?;
        let pgid = child.id().unwrap_or(0);
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(io::Error::other("the child's pipes are missing"));
        };
        Ok(SessionChild {
            child,
            io: Some(SessionIo::Pipes {
                stdin,
                stdout,
                stderr,
            }),
            pgid,
        })
    }

    fn shell(&self) -> OsString {
        self.env
            .iter()
            .rev()
            .find(|(k, v)| k == "SHELL" && !v.is_empty())
            .map_or_else(|| "/bin/sh".into(), |(_, v)| v.clone())
    }
}

/// A new PTY pair sized `cols` × `rows`: (master, slave).
fn open_pty(cols: u16, rows: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::fs::{Mode, OFlags};
    use rustix::pty::OpenptFlags;
    let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY)?;
    rustix::io::fcntl_setfd(&master, rustix::io::FdFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    set_size(&master, cols, rows)?;
    Ok((master, slave))
}

fn set_size(fd: impl AsFd, cols: u16, rows: u16) -> io::Result<()> {
    let size = rustix::termios::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    Ok(rustix::termios::tcsetwinsize(fd, size)?)
}

/// The master side of a session's PTY, non-blocking on the tokio reactor.
#[derive(Debug)]
pub struct Pty(AsyncFd<OwnedFd>);

impl Pty {
    #[allow(unsafe_code)]
    fn new(master: OwnedFd) -> io::Result<Self> {
        rustix::io::ioctl_fionbio(&master, true)?;
        // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and refers to the
        // same PTY master until the AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register(master) }.map_err(io::Error::from)?;
        Ok(Pty(fd))
    }

    /// Reads output; 0 once every process holding the slave has closed it.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard.try_io(|fd| Ok(rustix::io::read(fd, &mut *buf)?)) {
                Ok(Ok(n)) => return Ok(n),
                // Linux answers EIO on the master once the slave side is gone: end of output.
                Ok(Err(e)) if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => {
                    return Ok(0);
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data` (the child's terminal input).
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.0.writable().await?;
            match guard.try_io(|fd| Ok(rustix::io::write(fd, data)?)) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Sets the terminal size; the child gets SIGWINCH.
    pub fn resize(&self, cols: u16, rows: u16) -> io::Result<()> {
        set_size(self.0.get_ref(), cols, rows)
    }
}
