//! The guest SDK for fngate policy plugins.
//!
//! A policy plugin is a WebAssembly component that fngate calls for every request (and every
//! object-storage event) on the triggers it is attached to; it answers with a [`Decision`]
//! (or an [`EventDecision`]). This crate wraps the bindings that `wit-bindgen` generates from
//! the `policy` world in fngate's `wit/` directory and adds what a plugin needs day to day:
//!
//! - the [`Plugin`] trait with do-nothing defaults, and [`export_plugin!`] to export it;
//! - builders on the decision types: [`Decision::route_to`], [`Decision::reject_error`],
//!   [`EventDecision::drop`], …;
//! - lookups on the inputs: [`Request::header`], [`Request::bearer_token`], …;
//! - the host's services: [`config`], [`log`], [`state`], [`rate_limit`], [`counter`],
//!   [`histogram`], [`now_ns`]; and [`hash64`] for stable splits;
//! - on targets other than wasm32, a `testing` module (a stand-in host) so plugins can be
//!   unit-tested natively.
//!
//! A complete plugin:
//!
//! ```no_run
//! use fngate_plugin::{Decision, Plugin, Request, config, export_plugin};
//!
//! struct Premium;
//!
//! impl Plugin for Premium {
//!     fn on_request(req: Request) -> Decision {
//!         let premium = config::get_or("premium_function", "llm/a100");
//!         match req.header("x-plan") {
//!             Some("premium") => Decision::route_to(premium).priority(10),
//!             _ => Decision::pass(),
//!         }
//!     }
//! }
//!
//! export_plugin!(Premium);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (crate-type `cdylib`): the
//! `.wasm` file cargo writes is the component fngate loads.

/// The raw bindings `wit-bindgen` generates from `wit/policy.wit` (world `policy`).
///
/// Plugins rarely need this module: the types are re-exported at the crate root and the host
/// functions are wrapped by [`config`], [`log`] and the free functions of this crate.
#[allow(unsafe_code, missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "policy",
        pub_export_macro: true,
        export_macro_name: "__export_policy",
        default_bindings_module: "fngate_plugin::bindings",
        additional_derives: [PartialEq, Eq],
    });
}

pub mod config;
mod decision;
mod host;
mod inputs;
pub mod log;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use bindings::fngate::policy::host::{FunctionLoad, Level};
pub use bindings::fngate::policy::types::{
    Decision, EventDecision, EventRoute, Header, InvocationType, ObjectEvent, Rejection, Request,
    Route,
};
pub use host::{counter, hash64, histogram, now_ns, rate_limit, state};

/// A policy plugin: implement the hooks you need, then export the type with
/// [`export_plugin!`].
///
/// Both hooks have defaults that change nothing: [`on_request`](Plugin::on_request) lets the
/// request through as the trigger routed it, [`on_event`](Plugin::on_event) dispatches the
/// event to the trigger's function. The hooks are associated functions (no `self`): fngate may
/// run each call on a different instance of the plugin, so there is no per-plugin object to
/// keep state in (see the README on state).
///
/// ```no_run
/// use fngate_plugin::{Decision, Plugin, Request, export_plugin};
///
/// struct BlockDelete;
///
/// impl Plugin for BlockDelete {
///     fn on_request(req: Request) -> Decision {
///         if req.method == "DELETE" {
///             return Decision::reject(405, "read-only").with_header("allow", "GET, POST");
///         }
///         Decision::pass()
///     }
///     // on_event: the default (dispatch) applies.
/// }
///
/// export_plugin!(BlockDelete);
/// ```
pub trait Plugin {
    /// Decides what to do with a request. The default lets it through unchanged.
    ///
    /// ```
    /// # use fngate_plugin::{Decision, Plugin, Request};
    /// struct Nothing;
    /// impl Plugin for Nothing {}
    /// # let req = fngate_plugin::testing::request("GET", "/");
    /// assert_eq!(Nothing::on_request(req), Decision::pass());
    /// ```
    fn on_request(req: Request) -> Decision {
        let _ = req;
        Decision::pass()
    }

    /// Decides what to do with an object-storage event. The default dispatches it to the
    /// trigger's function.
    ///
    /// ```
    /// # use fngate_plugin::{EventDecision, Plugin};
    /// struct Nothing;
    /// impl Plugin for Nothing {}
    /// # let ev = fngate_plugin::testing::event("uploads", "images/cat.png");
    /// assert_eq!(Nothing::on_event(ev), EventDecision::dispatch());
    /// ```
    fn on_event(ev: ObjectEvent) -> EventDecision {
        let _ = ev;
        EventDecision::dispatch()
    }
}

impl<T: Plugin> bindings::Guest for T {
    fn on_request(req: Request) -> Decision {
        <T as Plugin>::on_request(req)
    }

    fn on_event(event: ObjectEvent) -> EventDecision {
        <T as Plugin>::on_event(event)
    }
}

/// Exports a [`Plugin`] as the component's `on-request` and `on-event`.
///
/// Call it once per plugin crate, at the top level, with the name of the type (a plain
/// identifier, not a path). The crate must be a `cdylib`.
///
/// ```no_run
/// use fngate_plugin::{Plugin, export_plugin};
///
/// struct PassThrough;
/// impl Plugin for PassThrough {}
///
/// export_plugin!(PassThrough);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ident) => {
        $crate::bindings::__export_policy!($plugin with_types_in $crate::bindings);
    };
}
