//! Lua L7 hooks (Lua 5.4, built in). A hook script defines `on_request(req)` and/or
//! `on_response(resp, req)`; the proxy calls them for every request of the listeners and
//! routes that name the hook.
//!
//! - **States are reused**: each worker thread keeps one Lua state per hook program,
//!   created on first use and kept for the next requests, so a script's globals (and the
//!   predefined `state` table) survive between the requests one worker handles.
//! - **No copies of the metadata**: a call moves the message's metadata into the state's
//!   call slot and back; `req:get` and `req:set` work on it in place.
//! - **Sandboxed**: no `io`, `os`, `package`, `require`, `debug`, `dofile`, `loadfile`,
//!   `string.dump`; `load` takes text only. A memory cap per state and an instruction
//!   budget per call (counted by a VM hook every 1,000 instructions). A script that errors,
//!   runs out of budget or memory fails only the request it ran for.
//! - **Hot replacement**: a new configuration compiles the new script into a new program;
//!   requests that started on the old configuration finish with the old program, new
//!   ones use the new one, and states of programs nobody holds are dropped.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use crate::stats::Counter;
use bytestring::ByteString;
use mlua::{
    chunk::ChunkMode, AnyUserData, Function, HookTriggers, Lua, LuaOptions, StdLib, UserData,
    UserDataMethods, Value, VmState,
};

use crate::config;
use crate::message::{Message, Metadata};
use crate::stats::Stats;

/// Default memory cap of one hook state.
pub const DEFAULT_MEMORY_LIMIT: usize = 8 * 1024 * 1024;

/// Default instruction budget of one call.
pub const DEFAULT_INSTRUCTION_LIMIT: u64 = 1_000_000;

/// Most matcher steps one pattern function call may take, whatever budget is left.
const PATTERN_STEPS_PER_CALL: u64 = 10_000_000;

/// The VM hook runs every this many instructions to charge the budget.
const BUDGET_STEP: u32 = 1000;

static NEXT_PROGRAM: AtomicU64 = AtomicU64::new(1);

/// Counters of one hook.
#[derive(Clone, Debug)]
pub struct HookStats {
    /// Calls of `on_request` and `on_response`.
    pub calls: Counter,
    /// Calls that failed: a Lua error.
    pub errors: Counter,
    /// Calls stopped by the instruction budget.
    pub budget_exceeded: Counter,
    /// Calls stopped by the memory cap.
    pub memory_exceeded: Counter,
    /// Requests the hook rejected.
    pub rejected: Counter,
}

/// A compiled hook: its source and limits. States are built from it per worker.
pub struct HookProgram {
    id: u64,
    name: Arc<str>,
    source: Arc<str>,
    memory_limit: usize,
    instruction_limit: u64,
    has_request: bool,
    has_response: bool,
    stats: HookStats,
}

impl std::fmt::Debug for HookProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookProgram")
            .field("name", &self.name)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// What a hook decided about a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Carry on (possibly to the cluster the hook chose with `route_to`).
    Continue,
    /// The hook called `reject(message)`.
    Reject(String),
    /// The hook failed (Lua error, budget or memory); the text says why.
    Failed(String),
}

impl HookProgram {
    /// Compiles `hook`: builds a state on this thread, runs the chunk's top level and
    /// checks that it defines `on_request` or `on_response`. The error is the Lua
    /// message (syntax error with its line, or the runtime error of the top level).
    pub fn compile(hook: &config::Hook, stats: &Stats) -> Result<Arc<HookProgram>, String> {
        let mut program = HookProgram {
            id: NEXT_PROGRAM.fetch_add(1, Ordering::Relaxed),
            name: Arc::from(hook.name.as_str()),
            source: Arc::from(hook.script.as_str()),
            memory_limit: hook.memory_limit.unwrap_or(DEFAULT_MEMORY_LIMIT),
            instruction_limit: hook.instruction_limit.unwrap_or(DEFAULT_INSTRUCTION_LIMIT),
            has_request: false,
            has_response: false,
            stats: stats.hook(&hook.name),
        };
        let state = HookState::new(&program, Weak::new()).map_err(|e| describe(&e))?;
        program.has_request = state.on_request.is_some();
        program.has_response = state.on_response.is_some();
        if !program.has_request && !program.has_response {
            return Err("the script defines neither on_request nor on_response".into());
        }
        Ok(Arc::new(program))
    }

    /// True when this program was compiled from exactly `hook`.
    pub fn same_config(&self, hook: &config::Hook) -> bool {
        *self.source == *hook.script
            && self.memory_limit == hook.memory_limit.unwrap_or(DEFAULT_MEMORY_LIMIT)
            && self.instruction_limit == hook.instruction_limit.unwrap_or(DEFAULT_INSTRUCTION_LIMIT)
    }

    /// Checks a hook's script without keeping anything.
    pub fn check(hook: &config::Hook) -> Result<(), String> {
        Self::compile(hook, &Stats::new()).map(|_| ())
    }

    /// The hook's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True when the script defines `on_request`.
    pub fn has_request(&self) -> bool {
        self.has_request
    }

    /// True when the script defines `on_response`.
    pub fn has_response(&self) -> bool {
        self.has_response
    }

    /// Runs `on_request(req)` on `msg`. A `route_to` from the script is stored in
    /// `route_to` (the last call wins).
    pub fn on_request(
        self: &Arc<Self>,
        msg: &mut Message,
        protocol: &str,
        route_to: &mut Option<String>,
    ) -> Verdict {
        if !self.has_request {
            return Verdict::Continue;
        }
        self.run(msg, None, protocol, route_to)
    }

    /// Runs `on_response(resp, req)` on `resp`, with `req` readable.
    pub fn on_response(
        self: &Arc<Self>,
        resp: &mut Message,
        req: &Message,
        protocol: &str,
    ) -> Verdict {
        if !self.has_response {
            return Verdict::Continue;
        }
        let mut ignored = None;
        self.run(resp, Some(req), protocol, &mut ignored)
    }

    fn run(
        self: &Arc<Self>,
        msg: &mut Message,
        request: Option<&Message>,
        protocol: &str,
        route_to: &mut Option<String>,
    ) -> Verdict {
        self.stats.calls.inc();
        let result = STATES.with(|states| {
            let mut states = states.borrow_mut();
            let r = match states.get_mut(&self.id) {
                Some(state) => state.call(msg, request, protocol),
                None => {
                    // Drop the states of programs no configuration holds any more.
                    states.retain(|_, s| s.program.strong_count() > 0);
                    let mut state = HookState::new(self, Arc::downgrade(self))?;
                    let r = state.call(msg, request, protocol);
                    states.insert(self.id, state);
                    r
                }
            };
            if matches!(r, Err(mlua::Error::MemoryError(_))) {
                // Start over with a fresh state rather than keep one at its cap.
                states.remove(&self.id);
            }
            r
        });
        match result {
            Ok(outcome) => {
                if let Some(cluster) = outcome.route_to {
                    *route_to = Some(cluster);
                }
                match outcome.reject {
                    Some(text) => {
                        self.stats.rejected.inc();
                        Verdict::Reject(text)
                    }
                    None => Verdict::Continue,
                }
            }
            Err(e) => {
                let text = describe(&e);
                match classify(&e) {
                    Failure::Budget => self.stats.budget_exceeded.inc(),
                    Failure::Memory => self.stats.memory_exceeded.inc(),
                    Failure::Error => self.stats.errors.inc(),
                };
                tracing::warn!(hook = %self.name, error = %text, "hook failed");
                Verdict::Failed(text)
            }
        }
    }
}

thread_local! {
    /// This worker's Lua states, by program id.
    static STATES: RefCell<HashMap<u64, HookState>> = RefCell::new(HashMap::new());
}

enum Failure {
    Budget,
    Memory,
    Error,
}

const BUDGET_MESSAGE: &str = "instruction budget exceeded";

fn classify(e: &mlua::Error) -> Failure {
    match e {
        mlua::Error::MemoryError(_) => Failure::Memory,
        mlua::Error::CallbackError { cause, .. } => classify(cause),
        mlua::Error::RuntimeError(m) if m.contains(BUDGET_MESSAGE) => Failure::Budget,
        _ if e.to_string().contains(BUDGET_MESSAGE) => Failure::Budget,
        _ => Failure::Error,
    }
}

/// A one-line description of a Lua error.
fn describe(e: &mlua::Error) -> String {
    match e {
        mlua::Error::CallbackError { cause, .. } => describe(cause),
        mlua::Error::MemoryError(_) => "memory limit exceeded".into(),
        other => {
            let text = other.to_string();
            text.lines().next().unwrap_or_default().to_owned()
        }
    }
}

/// What the script did to the call besides changing metadata.
#[derive(Default)]
struct Outcome {
    route_to: Option<String>,
    reject: Option<String>,
}

/// The data a call works on, moved in for the call and out after it.
#[derive(Default)]
struct CallSlot {
    metadata: Metadata,
    request_id: u64,
    status: Option<u32>,
    protocol: String,
    /// The request, read-only, during `on_response`.
    request: Option<Metadata>,
    request_id_of_request: u64,
    outcome: Outcome,
}

/// Which object a Lua handle stands for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// `req` in `on_request`: readable, writable, can route and reject.
    Request,
    /// `resp` in `on_response`: readable and writable.
    Response,
    /// `req` in `on_response`: readable.
    RequestView,
}

struct Handle {
    role: Role,
    slot: Rc<RefCell<CallSlot>>,
}

fn read_only() -> mlua::Error {
    mlua::Error::RuntimeError("the request is read-only in on_response".into())
}

/// Text of a value the script passes as an attribute value.
fn attribute_text(v: &Value) -> mlua::Result<ByteString> {
    match v {
        Value::String(s) => Ok(ByteString::from(&*s.to_str()?)),
        Value::Integer(i) => Ok(ByteString::from(i.to_string())),
        Value::Number(n) => Ok(ByteString::from(n.to_string())),
        Value::Boolean(b) => Ok(ByteString::from(if *b { "true" } else { "false" })),
        other => Err(mlua::Error::RuntimeError(format!(
            "attribute values are strings, numbers or booleans, not {}",
            other.type_name()
        ))),
    }
}

impl Handle {
    fn with_metadata<R>(&self, f: impl FnOnce(&Metadata) -> R) -> R {
        let slot = self.slot.borrow();
        match self.role {
            Role::RequestView => f(slot.request.as_ref().unwrap_or(&slot.metadata)),
            _ => f(&slot.metadata),
        }
    }
}

impl UserData for Handle {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("get", |lua, this, key: mlua::LuaString| {
            let key = key.to_str()?;
            this.with_metadata(|md| match md.get(&key) {
                Some(v) => lua.create_string(v).map(Value::String),
                None => Ok(Value::Nil),
            })
        });
        methods.add_method("set", |_, this, (key, value): (mlua::LuaString, Value)| {
            if this.role == Role::RequestView {
                return Err(read_only());
            }
            let key = ByteString::from(&*key.to_str()?);
            if key.is_empty() {
                return Err(mlua::Error::RuntimeError("attribute name is empty".into()));
            }
            let value = attribute_text(&value)?;
            this.slot.borrow_mut().metadata.set(key, value);
            Ok(())
        });
        methods.add_method("remove", |lua, this, key: mlua::LuaString| {
            if this.role == Role::RequestView {
                return Err(read_only());
            }
            let key = key.to_str()?;
            let old = this.slot.borrow_mut().metadata.remove(&key);
            match old {
                Some(v) => lua.create_string(&*v).map(Value::String),
                None => Ok(Value::Nil),
            }
        });
        methods.add_method("attributes", |lua, this, ()| {
            this.with_metadata(|md| {
                let t = lua.create_table_with_capacity(0, md.len())?;
                for (k, v) in md.iter() {
                    t.raw_set(k, v)?;
                }
                Ok(t)
            })
        });
        methods.add_method("protocol", |lua, this, ()| {
            lua.create_string(&this.slot.borrow().protocol)
        });
        methods.add_method("request_id", |_, this, ()| {
            let slot = this.slot.borrow();
            let id = match this.role {
                Role::RequestView => slot.request_id_of_request,
                _ => slot.request_id,
            };
            Ok(i64::try_from(id).unwrap_or(i64::MAX))
        });
        methods.add_method("status", |_, this, ()| {
            Ok(match this.role {
                Role::Response => this.slot.borrow().status.map(i64::from),
                _ => None,
            })
        });
        methods.add_method("route_to", |_, this, cluster: mlua::LuaString| {
            if this.role != Role::Request {
                return Err(mlua::Error::RuntimeError(
                    "route_to is only available in on_request".into(),
                ));
            }
            let cluster = cluster.to_str()?.to_owned();
            this.slot.borrow_mut().outcome.route_to = Some(cluster);
            Ok(())
        });
        methods.add_method("reject", |_, this, message: Option<mlua::LuaString>| {
            if this.role != Role::Request {
                return Err(mlua::Error::RuntimeError(
                    "reject is only available in on_request".into(),
                ));
            }
            let text = match message {
                Some(m) => m.to_string_lossy(),
                None => "rejected by a hook".to_owned(),
            };
            this.slot.borrow_mut().outcome.reject = Some(text);
            Ok(())
        });
    }
}

/// One Lua state running one program on one worker.
struct HookState {
    /// Owns everything below; the functions and handles are only valid while it lives.
    _lua: Lua,
    program: Weak<HookProgram>,
    on_request: Option<Function>,
    on_response: Option<Function>,
    req: AnyUserData,
    resp: AnyUserData,
    req_view: AnyUserData,
    slot: Rc<RefCell<CallSlot>>,
    budget: Rc<Cell<u64>>,
    budget_steps: u64,
}

/// Lua run once in a fresh state before the script: takes away what a sandbox must not
/// offer and keeps a text-only `load`.
const PRELUDE: &str = r##"
local text_collect, exhausted = text_collect, budget_exhausted
local raw_pcall, raw_xpcall, raw_resume = pcall, xpcall, coroutine.resume
local raw_setmetatable, raw_rawget = setmetatable, rawget
-- A spent budget cannot be caught: whatever catches errors raises it again.
local function spent(...)
  if exhausted() then error("instruction budget exceeded", 0) end
  return ...
end
pcall = function(...) return spent(raw_pcall(...)) end
xpcall = function(...) return spent(raw_xpcall(...)) end
coroutine.resume = function(...) return spent(raw_resume(...)) end
-- Finalizers would run outside the calls they belong to.
setmetatable = function(t, mt)
  if type(mt) == "table" and raw_rawget(mt, "__gc") ~= nil then
    error("__gc metamethods are not available to hooks", 2)
  end
  return raw_setmetatable(t, mt)
end
local text_load = load
load = function(chunk, name, _mode, env)
  return text_load(chunk, name, "t", env)
end
dofile, loadfile, require, module = nil, nil, nil, nil
string.dump = nil
collectgarbage = function(opt, ...)
  if opt == nil or opt == "collect" or opt == "count" or opt == "step" then
    return text_collect(opt, ...)
  end
  error("collectgarbage(" .. tostring(opt) .. ") is not available to hooks", 2)
end
-- stdout belongs to the proxy: print goes to the log.
local log, tostring, select, concat = log, tostring, select, table.concat
print = function(...)
  local parts = {}
  for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
  log("info", concat(parts, "\t"))
end
state = {}
"##;

impl HookState {
    /// A state running `program`, kept while `owner` lives.
    fn new(program: &HookProgram, owner: Weak<HookProgram>) -> mlua::Result<HookState> {
        let libs = StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::UTF8 | StdLib::COROUTINE;
        let lua = Lua::new_with(libs, LuaOptions::default())?;
        lua.set_memory_limit(program.memory_limit)?;

        let budget = Rc::new(Cell::new(0u64));
        let counter = budget.clone();
        lua.set_global_hook(
            HookTriggers::new().every_nth_instruction(BUDGET_STEP),
            move |_, _| {
                let left = counter.get();
                if left == 0 {
                    return Err(mlua::Error::RuntimeError(BUDGET_MESSAGE.into()));
                }
                counter.set(left - 1);
                Ok(VmState::Continue)
            },
        )?;
        let budget_steps = program
            .instruction_limit
            .div_ceil(u64::from(BUDGET_STEP))
            .max(1);

        let globals = lua.globals();
        let collect: Function = globals.get("collectgarbage")?;
        globals.set("text_collect", collect)?;
        let spent = budget.clone();
        globals.set(
            "budget_exhausted",
            lua.create_function(move |_, ()| Ok(spent.get() == 0))?,
        )?;

        let name = program.name.clone();
        globals.set(
            "log",
            lua.create_function(move |_, (level, message): (mlua::LuaString, Value)| {
                let text = match &message {
                    Value::String(s) => s.to_string_lossy(),
                    Value::Integer(i) => i.to_string(),
                    Value::Number(n) => n.to_string(),
                    Value::Boolean(b) => b.to_string(),
                    Value::Nil => "nil".to_owned(),
                    other => other.type_name().to_owned(),
                };
                match &*level.to_str()? {
                    "error" => tracing::error!(hook = %name, "{text}"),
                    "warn" => tracing::warn!(hook = %name, "{text}"),
                    "info" => tracing::info!(hook = %name, "{text}"),
                    "debug" => tracing::debug!(hook = %name, "{text}"),
                    _ => tracing::trace!(hook = %name, "{text}"),
                }
                Ok(())
            })?,
        )?;
        globals.set(
            "hash",
            lua.create_function(|_, values: mlua::Variadic<mlua::LuaString>| {
                let parts: Vec<mlua::BorrowedStr> = values
                    .iter()
                    .map(|v| v.to_str())
                    .collect::<mlua::Result<_>>()?;
                let h = crate::lb::hash_values(parts.iter().map(|p| &**p));
                // Non-negative, so `hash(x) % 100` is a bucket from 0 to 99.
                Ok((h >> 1) as i64)
            })?,
        )?;
        budget.set(budget_steps);
        lua.load(PRELUDE).set_name("=prelude").exec()?;
        // The prelude keeps its own references to these helpers.
        globals.set("text_collect", Value::Nil)?;
        globals.set("budget_exhausted", Value::Nil)?;
        // Pattern matching runs in Rust and draws on the call's budget: a thousand
        // matcher steps cost what a thousand VM instructions do.
        crate::lua_pattern::install_metered(
            &lua,
            PATTERN_STEPS_PER_CALL,
            budget.clone(),
            u64::from(BUDGET_STEP),
        )?;

        budget.set(budget_steps);
        lua.load(&*program.source)
            .set_name(format!("={}", program.name))
            .set_mode(ChunkMode::Text)
            .exec()?;

        let on_request = match globals.get::<Value>("on_request")? {
            Value::Function(f) => Some(f),
            _ => None,
        };
        let on_response = match globals.get::<Value>("on_response")? {
            Value::Function(f) => Some(f),
            _ => None,
        };
        let slot = Rc::new(RefCell::new(CallSlot::default()));
        let handle = |role| {
            lua.create_userdata(Handle {
                role,
                slot: slot.clone(),
            })
        };
        Ok(HookState {
            req: handle(Role::Request)?,
            resp: handle(Role::Response)?,
            req_view: handle(Role::RequestView)?,
            program: owner,
            _lua: lua,
            on_request,
            on_response,
            slot,
            budget,
            budget_steps,
        })
    }

    fn call(
        &mut self,
        msg: &mut Message,
        request: Option<&Message>,
        protocol: &str,
    ) -> mlua::Result<Outcome> {
        {
            let mut slot = self.slot.borrow_mut();
            slot.metadata = std::mem::take(&mut msg.metadata);
            slot.request_id = msg.request_id;
            slot.status = msg.status;
            if slot.protocol != protocol {
                slot.protocol = protocol.to_owned();
            }
            slot.request = request.map(|r| r.metadata.clone());
            slot.request_id_of_request = request.map_or(0, |r| r.request_id);
            slot.outcome = Outcome::default();
        }
        self.budget.set(self.budget_steps);
        let result = match request {
            None => match &self.on_request {
                Some(f) => f.call::<()>(&self.req),
                None => Ok(()),
            },
            Some(_) => match &self.on_response {
                Some(f) => f.call::<()>((&self.resp, &self.req_view)),
                None => Ok(()),
            },
        };
        let mut slot = self.slot.borrow_mut();
        msg.metadata = std::mem::take(&mut slot.metadata);
        slot.request = None;
        let outcome = std::mem::take(&mut slot.outcome);
        drop(slot);
        result.map(|()| outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MessageKind;
    use bytes::Bytes;

    fn program(script: &str) -> Arc<HookProgram> {
        program_with(script, None, None)
    }

    fn program_with(script: &str, memory: Option<usize>, budget: Option<u64>) -> Arc<HookProgram> {
        HookProgram::compile(
            &config::Hook {
                name: "t".into(),
                script: script.into(),
                memory_limit: memory,
                instruction_limit: budget,
            },
            &Stats::new(),
        )
        .expect("compiles")
    }

    fn request(pairs: &[(&str, &str)]) -> Message {
        let mut m = Message::new(MessageKind::Request, 7, Bytes::new());
        for (k, v) in pairs {
            m.metadata.push_decoded(k, v);
        }
        m
    }

    fn run(p: &Arc<HookProgram>, m: &mut Message) -> (Verdict, Option<String>) {
        let mut route_to = None;
        let v = p.on_request(m, "test", &mut route_to);
        (v, route_to)
    }

    #[test]
    fn reads_and_changes_attributes_in_place() {
        let p = program(
            r#"
            function on_request(req)
              if req:get("batchjob") == "true" then req:set("x-tier", "batch") end
              req:set("n", 42)
              local old = req:remove("secret")
              req:set("old", old or "none")
              req:set("proto", req:protocol() .. "/" .. req:request_id())
            end"#,
        );
        let mut m = request(&[("batchjob", "true"), ("secret", "s3")]);
        assert_eq!(run(&p, &mut m), (Verdict::Continue, None));
        assert_eq!(m.metadata.get("x-tier"), Some("batch"));
        assert_eq!(m.metadata.get("n"), Some("42"));
        assert_eq!(m.metadata.get("secret"), None);
        assert_eq!(m.metadata.get("old"), Some("s3"));
        assert_eq!(m.metadata.get("proto"), Some("test/7"));
        assert!(m.metadata.is_dirty());

        let mut untouched = request(&[("batchjob", "false")]);
        let p = program(r#"function on_request(req) local _ = req:get("batchjob") end"#);
        run(&p, &mut untouched);
        assert!(!untouched.metadata.is_dirty(), "reading marks nothing");
    }

    #[test]
    fn route_to_reject_and_attributes() {
        let p = program(
            r#"
            function on_request(req)
              local attrs = req:attributes()
              if attrs["user"] == nil then return req:reject("who are you?") end
              req:route_to("cluster-" .. attrs["user"])
            end"#,
        );
        let mut m = request(&[("user", "u1")]);
        assert_eq!(
            run(&p, &mut m),
            (Verdict::Continue, Some("cluster-u1".into()))
        );
        let mut anon = request(&[]);
        assert_eq!(
            run(&p, &mut anon),
            (Verdict::Reject("who are you?".into()), None)
        );
    }

    #[test]
    fn on_response_sees_the_request_read_only() {
        let p = program(
            r#"
            function on_response(resp, req)
              resp:set("x-user", req:get("user") or "-")
              resp:set("x-status", tostring(resp:status()))
              local ok = pcall(function() req:set("user", "changed") end)
              resp:set("x-req-writable", tostring(ok))
            end"#,
        );
        let req = request(&[("user", "u9")]);
        let mut resp = Message::new(MessageKind::Response, 7, Bytes::new());
        resp.status = Some(20);
        assert_eq!(p.on_response(&mut resp, &req, "test"), Verdict::Continue);
        assert_eq!(resp.metadata.get("x-user"), Some("u9"));
        assert_eq!(resp.metadata.get("x-status"), Some("20"));
        assert_eq!(resp.metadata.get("x-req-writable"), Some("false"));
        assert_eq!(req.metadata.get("user"), Some("u9"));
    }

    #[test]
    fn state_survives_between_calls_on_a_worker_and_hash_is_stable() {
        let p = program(
            r#"
            state.n = 0
            function on_request(req)
              state.n = state.n + 1
              req:set("n", state.n)
              req:set("bucket", hash(req:get("user")) % 100)
            end"#,
        );
        let mut first = request(&[("user", "alice")]);
        let mut second = request(&[("user", "alice")]);
        run(&p, &mut first);
        run(&p, &mut second);
        assert_eq!(first.metadata.get("n"), Some("1"));
        assert_eq!(second.metadata.get("n"), Some("2"));
        assert_eq!(first.metadata.get("bucket"), second.metadata.get("bucket"));
        let bucket: i64 = first.metadata.get("bucket").unwrap().parse().unwrap();
        assert!((0..100).contains(&bucket));
        let expected = (crate::lb::hash_values(["alice"]) >> 1) as i64 % 100;
        assert_eq!(bucket, expected, "hash() is the proxy's xxh64");
    }

    #[test]
    fn compile_errors_name_the_line_and_scripts_must_define_a_hook() {
        let err = HookProgram::check(&config::Hook {
            name: "bad".into(),
            script: "function on_request(req)\n  if then end\nend".into(),
            memory_limit: None,
            instruction_limit: None,
        })
        .unwrap_err();
        assert!(err.contains("bad:2:"), "{err}");
        let err = HookProgram::check(&config::Hook {
            name: "empty".into(),
            script: "local x = 1".into(),
            memory_limit: None,
            instruction_limit: None,
        })
        .unwrap_err();
        assert!(err.contains("neither on_request nor on_response"), "{err}");
    }

    #[test]
    fn the_sandbox_offers_no_io_os_require_debug_or_bytecode() {
        for (probe, want) in [
            ("os.execute('true')", "os"),
            ("io.open('/etc/passwd')", "io"),
            ("require('os')", "require"),
            ("debug.getinfo(1)", "debug"),
            ("dofile('/etc/passwd')", "dofile"),
            ("loadfile('/etc/passwd')", "loadfile"),
            ("package.loadlib('x', 'y')", "package"),
            ("string.dump(function() end)", "dump"),
            ("collectgarbage('stop')", "collectgarbage"),
        ] {
            let p = program(&format!("function on_request(req) {probe} end"));
            let (v, _) = run(&p, &mut request(&[]));
            assert!(
                matches!(&v, Verdict::Failed(text) if text.contains(want) || text.contains("nil")),
                "{probe}: {v:?}"
            );
        }
        // Bytecode is refused even when produced elsewhere: a binary chunk's signature.
        let p = program(
            r#"function on_request(req)
                 local f, err = load("\27Lua\84\0\25\147\r\n\26\n")
                 req:set("loaded", tostring(f ~= nil))
                 req:set("err", tostring(err))
               end"#,
        );
        let mut m = request(&[]);
        assert_eq!(run(&p, &mut m).0, Verdict::Continue);
        assert_eq!(m.metadata.get("loaded"), Some("false"));
        assert!(m.metadata.get("err").unwrap().contains("binary"), "{m:?}");
        // Text chunks still load.
        let p = program(r#"function on_request(req) req:set("v", load("return 1 + 1")()) end"#);
        let mut m = request(&[]);
        run(&p, &mut m);
        assert_eq!(m.metadata.get("v"), Some("2"));
    }

    #[test]
    fn endless_loops_memory_bombs_and_deep_recursion_fail_only_their_call() {
        let looping = program_with(
            "function on_request(req) while true do end end",
            None,
            Some(100_000),
        );
        let (v, _) = run(&looping, &mut request(&[]));
        assert!(
            matches!(&v, Verdict::Failed(t) if t.contains(BUDGET_MESSAGE)),
            "{v:?}"
        );
        assert_eq!(looping.stats.budget_exceeded.get(), 1);

        let hidden = program_with(
            "function on_request(req) coroutine.wrap(function() while true do end end)() end",
            None,
            Some(100_000),
        );
        let (v, _) = run(&hidden, &mut request(&[]));
        assert!(
            matches!(&v, Verdict::Failed(t) if t.contains(BUDGET_MESSAGE)),
            "a loop inside a coroutine is budgeted too: {v:?}"
        );

        for escape in [
            "while true do pcall(function() while true do end end) end",
            "while true do xpcall(function() while true do end end, function() end) end",
            "while true do pcall(pcall, function() while true do end end) end",
            "while true do coroutine.resume(coroutine.create(function() while true do end end)) end",
        ] {
            let p = program_with(
                &format!("function on_request(req) {escape} end"),
                None,
                Some(100_000),
            );
            let (v, _) = run(&p, &mut request(&[]));
            assert!(
                matches!(&v, Verdict::Failed(t) if t.contains(BUDGET_MESSAGE)),
                "{escape}: {v:?}"
            );
        }
        let p = program(
            "function on_request(req) setmetatable({}, { __gc = function() while true do end end }) end",
        );
        let (v, _) = run(&p, &mut request(&[]));
        assert!(
            matches!(&v, Verdict::Failed(t) if t.contains("__gc")),
            "{v:?}"
        );

        let bomb = program_with(
            r#"function on_request(req) local s = string.rep("x", 64 * 1024 * 1024) end"#,
            Some(1024 * 1024),
            None,
        );
        let (v, _) = run(&bomb, &mut request(&[]));
        assert_eq!(v, Verdict::Failed("memory limit exceeded".into()));
        assert_eq!(bomb.stats.memory_exceeded.get(), 1);

        let growing = program_with(
            r#"t = {} function on_request(req) for i = 1, 1e9 do t[i] = i end end"#,
            Some(1024 * 1024),
            Some(u64::MAX / 2),
        );
        let (v, _) = run(&growing, &mut request(&[]));
        assert_eq!(v, Verdict::Failed("memory limit exceeded".into()));

        let deep = program(
            "local function f(n) return f(n + 1) + 1 end function on_request(req) f(1) end",
        );
        let (v, _) = run(&deep, &mut request(&[]));
        // The Lua stack outgrows the memory cap or Lua's own stack limit, whichever first.
        assert!(
            matches!(&v, Verdict::Failed(t) if t.contains("stack overflow") || t == "memory limit exceeded"),
            "{v:?}"
        );

        // Each hook still serves the next request normally.
        let fine = program(r#"function on_request(req) req:set("ok", "yes") end"#);
        for p in [&looping, &bomb, &growing, &deep] {
            let mut m = request(&[]);
            let _ = run(p, &mut m);
        }
        let mut m = request(&[]);
        assert_eq!(run(&fine, &mut m).0, Verdict::Continue);
        assert_eq!(m.metadata.get("ok"), Some("yes"));
    }

    #[test]
    fn backtracking_patterns_spend_the_call_budget() {
        for probe in [
            r#"string.rep("a", 5000):find(".-.-.-.-b")"#,
            r#"for i = 1, 1e6 do string.rep("a", 300):find("a-a-b") end"#,
        ] {
            let p = program(&format!("function on_request(req) {probe} end"));
            let (v, _) = run(&p, &mut request(&[]));
            assert!(
                matches!(&v, Verdict::Failed(t) if t.contains(BUDGET_MESSAGE)),
                "{probe}: {v:?}"
            );
        }
        let p = program(
            r#"function on_request(req)
                 local k, v = ("user=alice; tier=gold"):match("^(%w+)=(%w+)")
                 req:set(k, v)
               end"#,
        );
        let mut m = request(&[]);
        assert_eq!(run(&p, &mut m).0, Verdict::Continue);
        assert_eq!(m.metadata.get("user"), Some("alice"));
    }

    #[test]
    fn print_goes_to_the_log_not_to_stdout() {
        let p = program(
            r#"print("top level", 1)
               function on_request(req) print("in a call", true, nil) log("info", 42) end"#,
        );
        let mut m = request(&[]);
        assert_eq!(run(&p, &mut m).0, Verdict::Continue);
    }

    #[test]
    fn a_script_error_keeps_the_metadata_it_had() {
        let p = program(r#"function on_request(req) req:set("a", "1") error("boom") end"#);
        let mut m = request(&[("k", "v")]);
        let (v, _) = run(&p, &mut m);
        assert!(
            matches!(&v, Verdict::Failed(t) if t.contains("boom")),
            "{v:?}"
        );
        assert_eq!(m.metadata.get("k"), Some("v"), "the metadata came back");
        assert_eq!(p.stats.errors.get(), 1);
    }
}
