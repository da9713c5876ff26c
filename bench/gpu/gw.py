#!/usr/bin/env python3
"""Small fngate helpers for bench/gpu/run.sh (standard library only: the GPU machine has no
network to install anything). Every wait is bounded; a failure exits non-zero with a message.

    gw.py listeners DATA_DIR PID TIMEOUT_S        wait for fngate (PID) to write
                                                  DATA_DIR/listeners.json; print it
    gw.py admin DATA_DIR METHOD PATH [JSON_BODY]  one admin API call (TLS, trusting
                                                  DATA_DIR/tls/ca.pem, bearer DATA_DIR/admin-token);
                                                  print the JSON answer; exit 1 unless 2xx
    gw.py wait-instances DATA_DIR FUNCTION N TIMEOUT_S
                                                  poll GET /admin/functions/FUNCTION/instances
                                                  until N instances are ready; print the last answer
    gw.py get URL [CAFILE]                        GET a URL (http or https), print the body
"""

import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request


def fail(message):
    sys.exit(f"gw.py: {message}")


def listeners(data_dir, pid, timeout):
    path = os.path.join(data_dir, "listeners.json")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path) as f:
                found = json.load(f)
            if int(found.get("pid", -1)) == pid:
                print(json.dumps(found))
                return
        except (OSError, ValueError):
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            fail(f"fngate (pid {pid}) exited before it wrote {path}")
        if time.monotonic() > deadline:
            fail(f"no {path} from fngate (pid {pid}) within {timeout:.0f} s")
        time.sleep(0.05)


def admin_call(data_dir, method, path, body=None, timeout=10):
    with open(os.path.join(data_dir, "listeners.json")) as f:
        address = json.load(f)["admin"]
    with open(os.path.join(data_dir, "admin-token")) as f:
        token = f.read().strip()
    context = ssl.create_default_context(cafile=os.path.join(data_dir, "tls", "ca.pem"))
    request = urllib.request.Request(
        f"https://{address}{path}", method=method,
        data=body.encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as err:
        text = err.read().decode(errors="replace")
        try:
            return err.code, json.loads(text)
        except ValueError:
            return err.code, {"error": text}


def admin(data_dir, method, path, body=None):
    status, answer = admin_call(data_dir, method, path, body)
    print(json.dumps(answer, indent=2))
    if not 200 <= status < 300:
        fail(f"{method} {path}: status {status}")


def wait_instances(data_dir, function, count, timeout):
    deadline = time.monotonic() + timeout
    answer = None
    while True:
        try:
            status, answer = admin_call(data_dir, "GET", f"/admin/functions/{function}/instances")
            if status == 200:
                ready = [i for i in answer["instances"] if i.get("state") == "ready"]
                if len(ready) >= count:
                    print(json.dumps(answer, indent=2))
                    return
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            print(json.dumps(answer, indent=2))
            fail(f"{function}: fewer than {count} ready instances after {timeout:.0f} s")
        time.sleep(0.2)


def get(url, cafile=None):
    context = ssl.create_default_context(cafile=cafile) if url.startswith("https:") else None
    with urllib.request.urlopen(url, timeout=10, context=context) as r:
        sys.stdout.buffer.write(r.read())


def main(argv):
    if len(argv) < 2:
        fail(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "listeners" and len(args) == 3:
        listeners(args[0], int(args[1]), float(args[2]))
    elif cmd == "admin" and len(args) in (3, 4):
        admin(*args)
    elif cmd == "wait-instances" and len(args) == 4:
        wait_instances(args[0], args[1], int(args[2]), float(args[3]))
    elif cmd == "get" and len(args) in (1, 2):
        get(*args)
    else:
        fail(__doc__)


if __name__ == "__main__":
    main(sys.argv)
