//! Lua 5.4 string patterns (reference manual §6.4.1) matched in Rust under a step budget,
//! and the `string.find`, `string.match`, `string.gmatch` and `string.gsub` built on them
//! (manual §6.4).
//!
//! Lua's own matcher backtracks in C, where the VM's instruction count does not see it:
//! `string.rep("a", 5000):find(".-.-.-.-b")` would hold a worker thread for hours. Here
//! every step of the matcher (a character test, an attempt to match the rest of the
//! pattern, an element of a set examined, a byte of replacement text produced) is paid
//! from a [`Budget`]; a call that runs out fails with `instruction budget exceeded`.
//!
//! [`install`] replaces the four functions in a state's `string` table, which is also the
//! string metatable's `__index`, so method calls (`s:find(...)`) follow. Each call of one
//! of them, and each call of a `gmatch` iterator, gets a fresh budget;
//! [`install_metered`] also charges the steps to a counter shared with the host's
//! instruction budget, so that many calls in a loop add up. Plain searches (`find` with
//! `plain`, or a pattern without special characters) stay linear and free.
//!
//! The functions behave as Lua 5.4's, including argument coercion, the `init` rules, the
//! lazily detected pattern errors and their messages, with these differences:
//!
//! - When a script *tail-calls* one of them (`return s:match(p)`) and the call fails, the
//!   message's position prefix and the function name in a "bad argument" message are
//!   those of the caller's caller (the tail call replaced the caller's frame).
//! - An error value `gsub` gets from a replacement function or a replacement table's
//!   `__index` is passed on unchanged, except "not enough memory", which becomes the
//!   state's memory error (so the host sees the state ran out of memory).
//! - Running out of the budget is an error of its own, as is a `gsub` whose replacement
//!   text outgrows the budget (one step per byte produced).

use std::cell::Cell;
use std::fmt;
use std::ops::Range;
use std::rc::Rc;

use mlua::{Function, Lua, LuaString, MultiValue, Table, Value};

/// Most captures a pattern may open, as in Lua.
pub(crate) const MAX_CAPTURES: usize = 32;

/// How deeply the matcher may nest attempts to match the rest of a pattern, as in Lua
/// (beyond it: "pattern too complex"). Also bounds the matcher's use of the Rust stack.
const MAX_DEPTH: usize = 200;

/// The text of the error a call that runs out of budget raises (the runtime classifies
/// errors by it).
pub(crate) const BUDGET_MESSAGE: &str = "instruction budget exceeded";

/// Characters that make a pattern more than a plain string (a pattern without any is
/// searched for literally).
const SPECIALS: &[u8] = b"^$*+?.([%-";

/// Steps a match may still take. Every matcher step costs one.
#[derive(Debug)]
pub(crate) struct Budget(u64);

impl Budget {
    /// A budget of `steps` steps.
    pub(crate) fn new(steps: u64) -> Self {
        Budget(steps)
    }

    /// Steps left.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn remaining(&self) -> u64 {
        self.0
    }

    /// Pays `steps`, or fails (leaving nothing) when fewer are left.
    #[inline]
    fn charge(&mut self, steps: u64) -> Result<(), PatternError> {
        match self.0.checked_sub(steps) {
            Some(left) => {
                self.0 = left;
                Ok(())
            }
            None => {
                self.0 = 0;
                Err(PatternError::TooExpensive)
            }
        }
    }
}

/// Why a match failed other than by not matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PatternError {
    /// A malformed pattern or a pattern error found while matching; the text is Lua's
    /// message ("malformed pattern (missing ']')", "invalid capture index %2",
    /// "pattern too complex", ...).
    Malformed(String),
    /// The budget ran out.
    TooExpensive,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatternError::Malformed(text) => f.write_str(text),
            PatternError::TooExpensive => f.write_str(BUDGET_MESSAGE),
        }
    }
}

impl std::error::Error for PatternError {}

/// A [`PatternError::Malformed`] with `text`.
fn malformed(text: &str) -> PatternError {
    PatternError::Malformed(text.to_owned())
}

/// The error for a reference to capture `index` (1-based) that does not exist (yet).
fn invalid_capture_index(index: usize) -> PatternError {
    PatternError::Malformed(format!("invalid capture index %{index}"))
}

/// One value a pattern captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Capture {
    /// `(...)`: the captured bytes of the subject.
    Str(Range<usize>),
    /// `()`: the position (0-based offset into the subject; Lua shows it plus one).
    Position(usize),
}

/// The state of one capture during a match.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// Opened at this offset, not closed yet.
    Open(usize),
    /// The bytes from the first offset up to the second.
    Closed(usize, usize),
    /// A position capture at this offset.
    Position(usize),
}

/// Matches one pattern against one subject, at positions the caller chooses.
///
/// Keeps the captures of the last successful match until the next attempt.
pub(crate) struct Matcher<'a> {
    /// The subject.
    src: &'a [u8],
    /// The whole pattern (including a leading `^` taken as an anchor).
    pat: &'a [u8],
    /// Where matching starts in `pat`: 1 after an anchor, else 0.
    first: usize,
    /// Whether the pattern is anchored at the start position.
    anchored: bool,
    /// Captures opened so far.
    level: usize,
    /// Nested attempts still allowed.
    depth: usize,
    /// The captures; only the first `level` are meaningful.
    slots: [Slot; MAX_CAPTURES],
}

impl<'a> Matcher<'a> {
    /// A matcher of `pattern` on `src`. With `anchors`, a leading `^` anchors the match
    /// at the start position (as in `find`, `match` and `gsub`); without, it is an
    /// ordinary character (as in `gmatch`).
    pub(crate) fn new(src: &'a [u8], pattern: &'a [u8], anchors: bool) -> Self {
        let anchored = anchors && pattern.first() == Some(&b'^');
        Matcher {
            src,
            pat: pattern,
            first: usize::from(anchored),
            anchored,
            level: 0,
            depth: MAX_DEPTH,
            slots: [Slot::Position(0); MAX_CAPTURES],
        }
    }

    /// True when the pattern starts with an anchoring `^`.
    pub(crate) fn anchored(&self) -> bool {
        self.anchored
    }

    /// Matches the pattern starting exactly at `start` (at most the subject's length);
    /// gives the end of the match.
    pub(crate) fn match_at(
        &mut self,
        start: usize,
        budget: &mut Budget,
    ) -> Result<Option<usize>, PatternError> {
        self.level = 0;
        self.depth = MAX_DEPTH;
        self.attempt(start, self.first, budget)
    }

    /// Finds the first match starting at `from` (at most the subject's length) or later
    /// (only at `from` when anchored); gives its start and end.
    pub(crate) fn search(
        &mut self,
        from: usize,
        budget: &mut Budget,
    ) -> Result<Option<(usize, usize)>, PatternError> {
        let mut start = from;
        loop {
            if let Some(end) = self.match_at(start, budget)? {
                return Ok(Some((start, end)));
            }
            if self.anchored || start >= self.src.len() {
                return Ok(None);
            }
            start += 1;
        }
    }

    /// How many captures the last successful match made.
    pub(crate) fn capture_count(&self) -> usize {
        self.level
    }

    /// Capture `index` (0-based) of the last successful match, which covered `whole`.
    /// Index 0 of a pattern without captures is the whole match; other indexes past the
    /// captures are errors, as is a capture never closed.
    pub(crate) fn capture(
        &self,
        index: usize,
        whole: Range<usize>,
    ) -> Result<Capture, PatternError> {
        if index >= self.level {
            return if index == 0 {
                Ok(Capture::Str(whole))
            } else {
                Err(invalid_capture_index(index + 1))
            };
        }
        match self.slots[index] {
            Slot::Open(_) => Err(malformed("unfinished capture")),
            Slot::Closed(from, to) => Ok(Capture::Str(from..to)),
            Slot::Position(at) => Ok(Capture::Position(at)),
        }
    }

    /// Matches the pattern from `p` on the subject from `s`, one nesting level deeper.
    fn attempt(
        &mut self,
        s: usize,
        p: usize,
        budget: &mut Budget,
    ) -> Result<Option<usize>, PatternError> {
        if self.depth == 0 {
            return Err(malformed("pattern too complex"));
        }
        self.depth -= 1;
        let result = self.match_here(s, p, budget);
        self.depth += 1;
        result
    }

    /// The matcher proper: walks the pattern items from `p`, recursing where an item
    /// leaves a choice to come back to.
    fn match_here(
        &mut self,
        mut s: usize,
        mut p: usize,
        budget: &mut Budget,
    ) -> Result<Option<usize>, PatternError> {
        let pat = self.pat;
        loop {
            budget.charge(1)?;
            let Some(&c) = pat.get(p) else {
                return Ok(Some(s));
            };
            match c {
                b'(' => {
                    return if pat.get(p + 1) == Some(&b')') {
                        self.open_capture(s, p + 2, Slot::Position(s), budget)
                    } else {
                        self.open_capture(s, p + 1, Slot::Open(s), budget)
                    };
                }
                b')' => return self.close_capture(s, p + 1, budget),
                b'$' if p + 1 == pat.len() => return Ok((s == self.src.len()).then_some(s)),
                b'%' => match pat.get(p + 1) {
                    Some(b'b') => match self.balanced(s, p + 2, budget)? {
                        Some(end) => {
                            s = end;
                            p += 4;
                            continue;
                        }
                        None => return Ok(None),
                    },
                    Some(b'f') => {
                        p += 2;
                        if pat.get(p) != Some(&b'[') {
                            return Err(malformed("missing '[' after '%f' in pattern"));
                        }
                        let ep = self.class_end(p, budget)?;
                        let previous = if s == 0 { 0 } else { self.src[s - 1] };
                        let current = self.src.get(s).copied().unwrap_or(0);
                        if !self.in_set(previous, p, ep - 1, budget)?
                            && self.in_set(current, p, ep - 1, budget)?
                        {
                            p = ep;
                            continue;
                        }
                        return Ok(None);
                    }
                    Some(&digit) if digit.is_ascii_digit() => {
                        match self.back_reference(s, digit, budget)? {
                            Some(end) => {
                                s = end;
                                p += 2;
                                continue;
                            }
                            None => return Ok(None),
                        }
                    }
                    _ => {}
                },
                _ => {}
            }
            // A single character class, perhaps followed by a repetition.
            let ep = self.class_end(p, budget)?;
            let matched = self.single(s, p, ep, budget)?;
            let repetition = pat.get(ep).copied();
            if !matched {
                if matches!(repetition, Some(b'*' | b'?' | b'-')) {
                    // Zero repetitions are fine: go on with the next item.
                    p = ep + 1;
                    continue;
                }
                return Ok(None);
            }
            match repetition {
                Some(b'?') => {
                    if let Some(end) = self.attempt(s + 1, ep + 1, budget)? {
                        return Ok(Some(end));
                    }
                    p = ep + 1;
                }
                Some(b'+') => return self.longest(s + 1, 0, p, ep, budget),
                Some(b'*') => return self.longest(s, 1, p, ep, budget),
                Some(b'-') => return self.shortest(s, p, ep, budget),
                _ => {
                    s += 1;
                    p = ep;
                }
            }
        }
    }

    /// Where the single character class at `p` ends in the pattern.
    fn class_end(&self, p: usize, budget: &mut Budget) -> Result<usize, PatternError> {
        let pat = self.pat;
        match pat[p] {
            b'%' if p + 1 < pat.len() => Ok(p + 2),
            b'%' => Err(malformed("malformed pattern (ends with '%')")),
            b'[' => {
                let mut q = p + 1;
                if pat.get(q) == Some(&b'^') {
                    q += 1;
                }
                // The first element is taken even when it is a ']', and an escaped
                // character never closes the set.
                loop {
                    let Some(&element) = pat.get(q) else {
                        return Err(malformed("malformed pattern (missing ']')"));
                    };
                    q += 1;
                    if element == b'%' && q < pat.len() {
                        q += 1;
                    }
                    if pat.get(q) == Some(&b']') {
                        break;
                    }
                }
                budget.charge((q - p) as u64)?;
                Ok(q + 1)
            }
            _ => Ok(p + 1),
        }
    }

    /// Whether the subject's character at `s` (none past the end) is in the single
    /// character class from `p` to `ep`.
    fn single(
        &self,
        s: usize,
        p: usize,
        ep: usize,
        budget: &mut Budget,
    ) -> Result<bool, PatternError> {
        budget.charge(1)?;
        let Some(&c) = self.src.get(s) else {
            return Ok(false);
        };
        Ok(match self.pat[p] {
            b'.' => true,
            b'%' => class_matches(c, self.pat[p + 1]),
            b'[' => self.in_set(c, p, ep - 1, budget)?,
            literal => literal == c,
        })
    }

    /// Whether `c` is in the set whose `[` is at `open` and closing `]` at `close`.
    fn in_set(
        &self,
        c: u8,
        open: usize,
        close: usize,
        budget: &mut Budget,
    ) -> Result<bool, PatternError> {
        let pat = self.pat;
        let mut p = open + 1;
        let complement = pat[p] == b'^';
        if complement {
            p += 1;
        }
        let mut examined = 0u64;
        let found = loop {
            if p >= close {
                break false;
            }
            examined += 1;
            if pat[p] == b'%' {
                if class_matches(c, pat[p + 1]) {
                    break true;
                }
                p += 2;
            } else if pat[p + 1] == b'-' && p + 2 < close {
                if (pat[p]..=pat[p + 2]).contains(&c) {
                    break true;
                }
                p += 3;
            } else {
                if pat[p] == c {
                    break true;
                }
                p += 1;
            }
        };
        budget.charge(examined)?;
        Ok(found != complement)
    }

    /// `%bxy` with `x` and `y` at `p`: the end of the balanced run starting at `s`.
    fn balanced(
        &self,
        s: usize,
        p: usize,
        budget: &mut Budget,
    ) -> Result<Option<usize>, PatternError> {
        let (Some(&open), Some(&close)) = (self.pat.get(p), self.pat.get(p + 1)) else {
            return Err(malformed("malformed pattern (missing arguments to '%b')"));
        };
        budget.charge(1)?;
        if self.src.get(s) != Some(&open) {
            return Ok(None);
        }
        let mut depth = 1usize;
        for (i, &c) in self.src[s + 1..].iter().enumerate() {
            // The closing character counts first, so `%b""` works.
            if c == close {
                depth -= 1;
                if depth == 0 {
                    budget.charge(i as u64 + 1)?;
                    return Ok(Some(s + i + 2));
                }
            } else if c == open {
                depth += 1;
            }
        }
        budget.charge((self.src.len() - s) as u64)?;
        Ok(None)
    }

    /// `%1`-`%9` (`digit`): the end of a copy of that capture at `s`.
    fn back_reference(
        &self,
        s: usize,
        digit: u8,
        budget: &mut Budget,
    ) -> Result<Option<usize>, PatternError> {
        let index = usize::from(digit - b'0');
        if index == 0 || index > self.level {
            return Err(invalid_capture_index(index));
        }
        let (from, to) = match self.slots[index - 1] {
            Slot::Open(_) => return Err(invalid_capture_index(index)),
            // A position is no text: it never matches.
            Slot::Position(_) => return Ok(None),
            Slot::Closed(from, to) => (from, to),
        };
        let len = to - from;
        budget.charge(len as u64 + 1)?;
        let copy = self.src.get(s..s + len);
        Ok((copy == Some(&self.src[from..to])).then_some(s + len))
    }

    /// Opens a capture (`slot`) at `s` and matches the rest of the pattern from `p`.
    fn open_capture(
        &mut self,
        s: usize,
        p: usize,
        slot: Slot,
        budget: &mut Budget,
    ) -> Result<Option<usize>, PatternError> {
        if self.level >= MAX_CAPTURES {
            return Err(malformed("too many captures"));
        }
        self.slots[self.level] = slot;
        self.level += 1;
        let result = self.attempt(s, p, budget)?;
        if result.is_none() {
            self.level -= 1;
        }
        Ok(result)
    }

    /// Closes the innermost open capture at `s` and matches the rest from `p`.
    fn close_capture(
        &mut self,
        s: usize,
        p: usize,
        budget: &mut Budget,
    ) -> Result<Option<usize>, PatternError> {
        let Some((index, start)) = (0..self.level).rev().find_map(|i| match self.slots[i] {
            Slot::Open(start) => Some((i, start)),
            _ => None,
        }) else {
            return Err(malformed("invalid pattern capture"));
        };
        self.slots[index] = Slot::Closed(start, s);
        let result = self.attempt(s, p, budget)?;
        if result.is_none() {
            self.slots[index] = Slot::Open(start);
        }
        Ok(result)
    }

    /// A greedy repetition (`*`, `+`) of the class from `p` to `ep`, known to match at
    /// least `count` characters from `s`: takes as many as match, then gives them back
    /// one by one until the rest of the pattern matches.
    fn longest(
        &mut self,
        s: usize,
        mut count: usize,
        p: usize,
        ep: usize,
        budget: &mut Budget,
    ) -> Result<Option<usize>, PatternError> {
        while self.single(s + count, p, ep, budget)? {
            count += 1;
        }
        loop {
            if let Some(end) = self.attempt(s + count, ep + 1, budget)? {
                return Ok(Some(end));
            }
            if count == 0 {
                return Ok(None);
            }
            count -= 1;
        }
    }

    /// A lazy repetition (`-`) of the class from `p` to `ep` from `s`: takes one more
    /// character only while the rest of the pattern does not match.
    fn shortest(
        &mut self,
        mut s: usize,
        p: usize,
        ep: usize,
        budget: &mut Budget,
    ) -> Result<Option<usize>, PatternError> {
        loop {
            if let Some(end) = self.attempt(s, ep + 1, budget)? {
                return Ok(Some(end));
            }
            if !self.single(s, p, ep, budget)? {
                return Ok(None);
            }
            s += 1;
        }
    }
}

/// Whether `c` is in the class `%cl` (C locale). A character that is not a class letter
/// stands for itself.
fn class_matches(c: u8, cl: u8) -> bool {
    let found = match cl.to_ascii_lowercase() {
        b'a' => c.is_ascii_alphabetic(),
        b'c' => c.is_ascii_control(),
        b'd' => c.is_ascii_digit(),
        b'g' => c.is_ascii_graphic(),
        b'l' => c.is_ascii_lowercase(),
        b'p' => c.is_ascii_punctuation(),
        b's' => matches!(c, b' ' | b'\t'..=b'\r'),
        b'u' => c.is_ascii_uppercase(),
        b'w' => c.is_ascii_alphanumeric(),
        b'x' => c.is_ascii_hexdigit(),
        // The zero byte: no longer in the manual, still accepted by Lua 5.4.
        b'z' => c == 0,
        _ => return cl == c,
    };
    if cl.is_ascii_uppercase() {
        !found
    } else {
        found
    }
}

/// Finds `p` in `s` from `init` (0-based) as `string.find` does with a pattern: the
/// start, the end (exclusive) and the pattern's captures.
pub(crate) fn find(
    s: &[u8],
    p: &[u8],
    init: usize,
    budget: &mut Budget,
) -> Result<Option<(usize, usize, Vec<Capture>)>, PatternError> {
    if init > s.len() {
        return Ok(None);
    }
    let mut matcher = Matcher::new(s, p, true);
    let Some((start, end)) = matcher.search(init, budget)? else {
        return Ok(None);
    };
    let captures = (0..matcher.capture_count())
        .map(|i| matcher.capture(i, start..end))
        .collect::<Result<_, _>>()?;
    Ok(Some((start, end, captures)))
}

/// True when `p` has none of the characters that make a pattern.
fn is_plain(p: &[u8]) -> bool {
    !p.iter().any(|c| SPECIALS.contains(c))
}

/// The first occurrence of `needle` in `hay` at `from` (at most `hay`'s length) or
/// later, in linear time (Knuth-Morris-Pratt, skipping to the needle's first byte).
fn plain_find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let hay = &hay[from..];
    let Some(&first) = needle.first() else {
        return Some(from);
    };
    if needle.len() > hay.len() {
        return None;
    }
    if needle.len() == 1 {
        return hay.iter().position(|&b| b == first).map(|i| from + i);
    }
    // borders[i]: length of the longest proper border of needle[..=i].
    let mut small = [0usize; 64];
    let mut large = Vec::new();
    let borders: &mut [usize] = if needle.len() <= small.len() {
        &mut small[..needle.len()]
    } else {
        large.resize(needle.len(), 0);
        &mut large
    };
    let mut k = 0;
    for i in 1..needle.len() {
        while k > 0 && needle[i] != needle[k] {
            k = borders[k - 1];
        }
        if needle[i] == needle[k] {
            k += 1;
        }
        borders[i] = k;
    }
    let mut matched = 0;
    let mut i = 0;
    while i < hay.len() {
        if matched == 0 {
            i += hay[i..].iter().position(|&b| b == first)?;
        }
        let b = hay[i];
        while matched > 0 && b != needle[matched] {
            matched = borders[matched - 1];
        }
        if b == needle[matched] {
            matched += 1;
        }
        i += 1;
        if matched == needle.len() {
            return Some(from + i - matched);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// The Lua functions.

/// Lua run once by [`install`]: thin Lua wrappers around the Rust functions, so their
/// errors are raised as Lua raises a library function's errors (a string, prefixed with
/// the caller's position). A Rust function returns `true` and its results, `false` and a
/// message to raise at the caller, or `nil` and an error value to pass on as it is.
const WRAPPERS: &str = r#"
local find, match, gmatch, gsub = ...
local error = error
local function check(ok, ...)
  if ok then return ... end
  if ok == false then error((...), 2) end
  error((...), 0)
end
local function lua_find(...) return check(find(...)) end
local function lua_match(...) return check(match(...)) end
local function lua_gsub(...) return check(gsub(...)) end
local function lua_gmatch(...)
  local ok, iterate = gmatch(...)
  if not ok then error(iterate, 2) end
  return function() return check(iterate()) end
end
return lua_find, lua_match, lua_gmatch, lua_gsub
"#;

/// Replaces `string.find`, `string.match`, `string.gmatch` and `string.gsub` in `lua`'s
/// `string` table (and so in the string metatable's `__index`) with versions whose
/// matching is budgeted: each call may take `steps_per_call` steps; one that needs more
/// fails with a Lua error containing `instruction budget exceeded`.
///
/// Call it once on a fresh state, before any script runs.
#[cfg(test)]
pub(crate) fn install(lua: &Lua, steps_per_call: u64) -> mlua::Result<()> {
    install_with(
        lua,
        Limits {
            per_call: steps_per_call,
            meter: None,
        },
    )
}

/// Like [`install`], and the steps the calls take are also charged to `meter`, a
/// counter shared with the host's instruction budget: one unit for every `steps_per_unit`
/// steps, and a call may take no more steps than the units left pay for. So a script
/// that calls the functions in a loop spends the same budget as its other work, rather
/// than `steps_per_call` afresh on every call.
pub(crate) fn install_metered(
    lua: &Lua,
    steps_per_call: u64,
    meter: Rc<Cell<u64>>,
    steps_per_unit: u64,
) -> mlua::Result<()> {
    install_with(
        lua,
        Limits {
            per_call: steps_per_call,
            meter: Some(Rc::new(Meter {
                units: meter,
                unit: steps_per_unit.max(1),
                carry: Cell::new(0),
            })),
        },
    )
}

/// Where each call's steps come from.
#[derive(Clone)]
struct Limits {
    /// Most steps one call may take.
    per_call: u64,
    /// The shared counter the steps are also charged to, if any.
    meter: Option<Rc<Meter>>,
}

/// A counter of the host's budget, in units of `unit` steps.
struct Meter {
    units: Rc<Cell<u64>>,
    unit: u64,
    /// Steps taken that do not yet add up to a unit.
    carry: Cell<u64>,
}

impl Limits {
    /// Runs `f` with the budget of one call, then charges the meter for what it took.
    fn run<R>(&self, f: impl FnOnce(&mut Budget) -> R) -> R {
        let granted = match &self.meter {
            None => self.per_call,
            Some(meter) => {
                let left = meter.units.get().saturating_mul(meter.unit);
                self.per_call.min(left.saturating_sub(meter.carry.get()))
            }
        };
        let mut budget = Budget::new(granted);
        let result = f(&mut budget);
        if let Some(meter) = &self.meter {
            let taken = meter.carry.get() + (granted - budget.remaining());
            let units = meter.units.get().saturating_sub(taken / meter.unit);
            meter.units.set(units);
            meter.carry.set(taken % meter.unit);
        }
        result
    }
}

/// Installs the functions with `limits`.
fn install_with(lua: &Lua, limits: Limits) -> mlua::Result<()> {
    let callers = Callers {
        pcall: lua.globals().get("pcall")?,
        index: lua
            .load("return function(t, k) return t[k] end")
            .set_name("=string")
            .eval()?,
    };
    // `string.find` (positions, then captures) or `string.match` (captures only).
    let search = |positions: bool| {
        let limits = limits.clone();
        lua.create_function(move |lua, args: MultiValue| {
            let result = limits.run(|budget| find_or_match(lua, &args, budget, positions));
            finish(lua, result)
        })
    };
    let find = search(true)?;
    let match_ = search(false)?;
    let gmatch = {
        let limits = limits.clone();
        lua.create_function(move |lua, args: MultiValue| finish(lua, gmatch(lua, &args, &limits)))?
    };
    let gsub = lua.create_function(move |lua, args: MultiValue| {
        let result = limits.run(|budget| gsub(lua, &args, budget, &callers));
        finish(lua, result)
    })?;
    let (find, match_, gmatch, gsub): (Function, Function, Function, Function) = lua
        .load(WRAPPERS)
        .set_name("=string")
        .call((find, match_, gmatch, gsub))?;
    let string: Table = lua.globals().get("string")?;
    string.raw_set("find", find)?;
    string.raw_set("match", match_)?;
    string.raw_set("gmatch", gmatch)?;
    string.raw_set("gsub", gsub)?;
    Ok(())
}

/// How one of the functions ends when it does not return.
enum Failure {
    /// A Lua error with this message, raised at the caller like a library function's.
    Error(String),
    /// An error a Lua function or metamethod the call ran raised, raised again as is.
    Rethrow(Value),
    /// An error of the host (memory, a Rust function's error), passed on untouched.
    Host(mlua::Error),
}

impl From<mlua::Error> for Failure {
    fn from(e: mlua::Error) -> Self {
        Failure::Host(e)
    }
}

impl From<PatternError> for Failure {
    fn from(e: PatternError) -> Self {
        Failure::Error(e.to_string())
    }
}

/// The Lua functions `gsub` calls replacement functions and tables through.
struct Callers {
    /// The state's `pcall`: a protected call hands back the error value itself.
    pcall: Function,
    /// `function(t, k) return t[k] end`: an index that runs `__index`.
    index: Function,
}

impl Callers {
    /// Calls `function` with `args` in protected mode: its first result, or the error it
    /// raised, to be raised again.
    fn call(&self, function: &Function, args: MultiValue) -> Result<Value, Failure> {
        let mut call = args;
        call.push_front(Value::Function(function.clone()));
        let mut results = self.pcall.call::<MultiValue>(call)?;
        let ok = matches!(results.pop_front(), Some(Value::Boolean(true)));
        let value = results.pop_front().unwrap_or(Value::Nil);
        if ok {
            return Ok(value);
        }
        match value {
            Value::String(text) if text.as_bytes() == b"not enough memory" => Err(Failure::Host(
                mlua::Error::MemoryError("not enough memory".into()),
            )),
            other => Err(Failure::Rethrow(other)),
        }
    }
}

/// What a Rust function returns to its Lua wrapper (see [`WRAPPERS`]).
fn finish(lua: &Lua, result: Result<MultiValue, Failure>) -> mlua::Result<MultiValue> {
    match result {
        Ok(mut values) => {
            values.push_front(Value::Boolean(true));
            Ok(values)
        }
        Err(Failure::Error(text)) => Ok(MultiValue::from_vec(vec![
            Value::Boolean(false),
            Value::String(lua.create_string(text)?),
        ])),
        Err(Failure::Rethrow(value)) => Ok(MultiValue::from_vec(vec![Value::Nil, value])),
        Err(Failure::Host(e)) => Err(e),
    }
}

/// A size or offset as a Lua integer.
fn lua_int(n: usize) -> Value {
    Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

/// The start offset (0-based, possibly past the end) Lua takes from a 1-based, possibly
/// negative `init` on a subject of `len` bytes.
fn start_offset(init: i64, len: usize) -> usize {
    if init > 0 {
        usize::try_from(init - 1).unwrap_or(usize::MAX)
    } else if init == 0 || init.unsigned_abs() > len as u64 {
        0
    } else {
        len - init.unsigned_abs() as usize
    }
}

/// A capture as the Lua value the functions return.
fn capture_value(lua: &Lua, src: &[u8], capture: Capture) -> mlua::Result<Value> {
    Ok(match capture {
        Capture::Str(range) => Value::String(lua.create_string(&src[range])?),
        Capture::Position(at) => lua_int(at + 1),
    })
}

/// Pushes the captures of `matcher`'s last match (`whole`) on `out`: all of them, or the
/// whole match when the pattern has none.
fn push_captures(
    lua: &Lua,
    src: &[u8],
    matcher: &Matcher<'_>,
    whole: Range<usize>,
    out: &mut MultiValue,
) -> Result<(), Failure> {
    for i in 0..matcher.capture_count().max(1) {
        let capture = matcher.capture(i, whole.clone())?;
        out.push_back(capture_value(lua, src, capture)?);
    }
    Ok(())
}

/// Lua's name of a value's type, as a "bad argument" message shows it (`__name` of a
/// metatable when it is a string).
fn type_name(value: Option<&Value>) -> String {
    let named = |name: Option<Value>| match name {
        Some(Value::String(name)) => Some(name.to_string_lossy()),
        _ => None,
    };
    let plain = match value {
        None => "no value",
        Some(Value::Nil) => "nil",
        Some(Value::Boolean(_)) => "boolean",
        Some(Value::LightUserData(_)) => "light userdata",
        Some(Value::Integer(_) | Value::Number(_)) => "number",
        Some(Value::String(_)) => "string",
        Some(Value::Table(t)) => {
            let name = t.metatable().and_then(|m| m.raw_get("__name").ok());
            return named(name).unwrap_or_else(|| "table".into());
        }
        Some(Value::UserData(u)) => {
            let name = u.metatable().ok().and_then(|m| m.get("__name").ok());
            return named(name).unwrap_or_else(|| "userdata".into());
        }
        Some(Value::Function(_)) => "function",
        Some(Value::Thread(_)) => "thread",
        Some(_) => "userdata",
    };
    plain.to_owned()
}

/// Lua's name of a value's type, without `__name` (as in "invalid replacement value").
fn basic_type_name(value: &Value) -> &'static str {
    match value {
        Value::Nil => "nil",
        Value::Boolean(_) => "boolean",
        Value::Integer(_) | Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Table(_) => "table",
        Value::Function(_) => "function",
        Value::Thread(_) => "thread",
        _ => "userdata",
    }
}

/// The arguments of a call of one of the functions.
struct Args<'a> {
    lua: &'a Lua,
    /// The function's name in the `string` table.
    name: &'static str,
    values: &'a MultiValue,
}

impl<'a> Args<'a> {
    /// Argument `i` (1-based); `None` when the call passed fewer.
    fn get(&self, i: usize) -> Option<&'a Value> {
        self.values.get(i - 1)
    }

    /// "bad argument" for argument `arg`, named as Lua names it: after the name the call
    /// used, not counting `self` in a method call.
    fn bad_argument(&self, arg: usize, detail: &str) -> Failure {
        // Level 1 is the Lua wrapper; how it was called is how the script called us.
        let called = self.lua.inspect_stack(1, |frame| {
            let names = frame.names();
            (
                names.name.map(|n| n.into_owned()),
                names.name_what == Some("method"),
            )
        });
        let (name, method) = called.unwrap_or((None, false));
        let mut arg = arg;
        if method {
            arg -= 1;
            if arg == 0 {
                let name = name.as_deref().unwrap_or(self.name);
                return Failure::Error(format!("calling '{name}' on bad self ({detail})"));
            }
        }
        let name = name.unwrap_or_else(|| format!("string.{}", self.name));
        Failure::Error(format!("bad argument #{arg} to '{name}' ({detail})"))
    }

    /// "bad argument": `expected` expected, got the argument's type.
    fn type_error(&self, arg: usize, expected: &str) -> Failure {
        let got = type_name(self.get(arg));
        self.bad_argument(arg, &format!("{expected} expected, got {got}"))
    }

    /// Argument `i` as a string; numbers are converted as Lua converts them.
    fn string(&self, i: usize) -> Result<LuaString, Failure> {
        match self.get(i) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v @ (Value::Integer(_) | Value::Number(_))) => {
                match self.lua.coerce_string(v.clone())? {
                    Some(s) => Ok(s),
                    None => Err(self.type_error(i, "string")),
                }
            }
            _ => Err(self.type_error(i, "string")),
        }
    }

    /// Optional integer argument `i`: `default` when absent or nil; floats with an exact
    /// integer value and numeric strings are accepted, as in Lua.
    fn opt_integer(&self, i: usize, default: i64) -> Result<i64, Failure> {
        match self.get(i) {
            None | Some(Value::Nil) => Ok(default),
            Some(Value::Integer(n)) => Ok(*n),
            Some(v @ (Value::Number(_) | Value::String(_))) => {
                if let Some(n) = self.lua.coerce_integer(v.clone())? {
                    Ok(n)
                } else if self.lua.coerce_number(v.clone())?.is_some() {
                    Err(self.bad_argument(i, "number has no integer representation"))
                } else {
                    Err(self.type_error(i, "number"))
                }
            }
            _ => Err(self.type_error(i, "number")),
        }
    }
}

/// `string.find(s, pattern [, init [, plain]])` (`find`) and
/// `string.match(s, pattern [, init])`.
fn find_or_match(
    lua: &Lua,
    values: &MultiValue,
    budget: &mut Budget,
    is_find: bool,
) -> Result<MultiValue, Failure> {
    let args = Args {
        lua,
        name: if is_find { "find" } else { "match" },
        values,
    };
    let subject = args.string(1)?;
    let pattern = args.string(2)?;
    let s = subject.as_bytes();
    let p = pattern.as_bytes();
    let init = start_offset(args.opt_integer(3, 1)?, s.len());
    let mut out = MultiValue::new();
    if init > s.len() {
        out.push_back(Value::Nil);
        return Ok(out);
    }
    let plain = matches!(args.get(4), Some(v) if !matches!(v, Value::Nil | Value::Boolean(false)));
    if is_find && (plain || is_plain(&p)) {
        match plain_find(&s, &p, init) {
            Some(at) => {
                out.push_back(lua_int(at + 1));
                out.push_back(lua_int(at + p.len()));
            }
            None => out.push_back(Value::Nil),
        }
        return Ok(out);
    }
    if is_find {
        match find(&s, &p, init, budget)? {
            Some((start, end, captures)) => {
                out.push_back(lua_int(start + 1));
                out.push_back(lua_int(end));
                for capture in captures {
                    out.push_back(capture_value(lua, &s, capture)?);
                }
            }
            None => out.push_back(Value::Nil),
        }
        return Ok(out);
    }
    let mut matcher = Matcher::new(&s, &p, true);
    match matcher.search(init, budget)? {
        Some((start, end)) => push_captures(lua, &s, &matcher, start..end, &mut out)?,
        None => out.push_back(Value::Nil),
    }
    Ok(out)
}

/// `string.gmatch(s, pattern [, init])`: the iterator (a Rust function the Lua wrapper
/// wraps again).
fn gmatch(lua: &Lua, values: &MultiValue, limits: &Limits) -> Result<MultiValue, Failure> {
    let args = Args {
        lua,
        name: "gmatch",
        values,
    };
    let subject = args.string(1)?;
    let pattern = args.string(2)?;
    let len = subject.as_bytes().len();
    let init = start_offset(args.opt_integer(3, 1)?, len).min(len + 1);
    // Where the next search starts, and where the last match ended (a match may not end
    // there again: that would be an empty match right after the previous one).
    let state = Cell::new((init, None::<usize>));
    let limits = limits.clone();
    let iterate = lua.create_function(move |lua, _: MultiValue| {
        let result = limits.run(|budget| gmatch_next(lua, &subject, &pattern, &state, budget));
        finish(lua, result)
    })?;
    Ok(MultiValue::from_vec(vec![Value::Function(iterate)]))
}

/// One call of a `gmatch` iterator: the next match's captures, or nothing at the end.
fn gmatch_next(
    lua: &Lua,
    subject: &LuaString,
    pattern: &LuaString,
    state: &Cell<(usize, Option<usize>)>,
    budget: &mut Budget,
) -> Result<MultiValue, Failure> {
    let s = subject.as_bytes();
    let p = pattern.as_bytes();
    let (mut pos, last) = state.get();
    let mut matcher = Matcher::new(&s, &p, false);
    let mut out = MultiValue::new();
    while pos <= s.len() {
        if let Some(end) = matcher.match_at(pos, budget)? {
            if Some(end) != last {
                state.set((end, Some(end)));
                push_captures(lua, &s, &matcher, pos..end, &mut out)?;
                return Ok(out);
            }
        }
        pos += 1;
    }
    state.set((pos, last));
    Ok(out)
}

/// The replacement argument of `gsub`.
enum Replacement {
    /// A string (or number): text with `%0`-`%9` and `%%`.
    Text(LuaString),
    /// A table indexed by the first capture.
    Table(Table),
    /// A function called with the captures.
    Function(Function),
}

/// `string.gsub(s, pattern, repl [, n])`.
fn gsub(
    lua: &Lua,
    values: &MultiValue,
    budget: &mut Budget,
    callers: &Callers,
) -> Result<MultiValue, Failure> {
    let args = Args {
        lua,
        name: "gsub",
        values,
    };
    let subject = args.string(1)?;
    let pattern = args.string(2)?;
    let s = subject.as_bytes();
    let p = pattern.as_bytes();
    let max = args.opt_integer(4, lua_len(s.len()).saturating_add(1))?;
    let replacement = match args.get(3) {
        Some(Value::String(text)) => Replacement::Text(text.clone()),
        Some(v @ (Value::Integer(_) | Value::Number(_))) => match lua.coerce_string(v.clone())? {
            Some(text) => Replacement::Text(text),
            None => return Err(args.type_error(3, "string/function/table")),
        },
        Some(Value::Table(t)) => Replacement::Table(t.clone()),
        Some(Value::Function(f)) => Replacement::Function(f.clone()),
        _ => return Err(args.type_error(3, "string/function/table")),
    };
    let mut matcher = Matcher::new(&s, &p, true);
    let mut out = Output {
        text: Vec::new(),
        copied: 0,
        changed: false,
    };
    let mut pos = 0;
    let mut last = None;
    let mut count: i64 = 0;
    while count < max {
        match matcher.match_at(pos, budget)? {
            Some(end) if Some(end) != last => {
                count += 1;
                let whole = pos..end;
                out.replace(lua, &s, &matcher, whole, &replacement, callers, budget)?;
                pos = end;
                last = Some(end);
            }
            _ if pos < s.len() => pos += 1,
            _ => break,
        }
        if matcher.anchored() {
            break;
        }
    }
    let result = if out.changed {
        out.text.extend_from_slice(&s[out.copied..]);
        lua.create_string(&out.text)?
    } else {
        subject.clone()
    };
    Ok(MultiValue::from_vec(vec![
        Value::String(result),
        Value::Integer(count),
    ]))
}

/// A length as a Lua integer.
fn lua_len(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The text `gsub` builds: the subject up to `copied`, with replacements.
struct Output {
    text: Vec<u8>,
    /// How much of the subject `text` accounts for.
    copied: usize,
    /// Whether any replacement was made (else the result is the subject).
    changed: bool,
}

impl Output {
    /// Starts replacing the subject's `whole`: copies the subject up to it.
    fn begin(&mut self, src: &[u8], whole: &Range<usize>) {
        self.text.extend_from_slice(&src[self.copied..whole.start]);
        self.copied = whole.end;
        self.changed = true;
    }

    /// Appends `bytes`, one step per byte.
    fn push(&mut self, bytes: &[u8], budget: &mut Budget) -> Result<(), PatternError> {
        budget.charge(bytes.len() as u64)?;
        self.text.extend_from_slice(bytes);
        Ok(())
    }

    /// Replaces the match `whole` of `matcher` as `replacement` says.
    #[allow(clippy::too_many_arguments)]
    fn replace(
        &mut self,
        lua: &Lua,
        src: &[u8],
        matcher: &Matcher<'_>,
        whole: Range<usize>,
        replacement: &Replacement,
        callers: &Callers,
        budget: &mut Budget,
    ) -> Result<(), Failure> {
        let value = match replacement {
            Replacement::Text(text) => {
                self.begin(src, &whole);
                return self.expand(&text.as_bytes(), src, matcher, whole, budget);
            }
            Replacement::Table(table) => {
                let key = capture_value(lua, src, matcher.capture(0, whole.clone())?)?;
                let args = MultiValue::from_vec(vec![Value::Table(table.clone()), key]);
                callers.call(&callers.index, args)?
            }
            Replacement::Function(function) => {
                let mut captures = MultiValue::new();
                push_captures(lua, src, matcher, whole.clone(), &mut captures)?;
                callers.call(function, captures)?
            }
        };
        match value {
            // Keep the match as it is.
            Value::Nil | Value::Boolean(false) => Ok(()),
            Value::String(text) => {
                self.begin(src, &whole);
                Ok(self.push(&text.as_bytes(), budget)?)
            }
            v @ (Value::Integer(_) | Value::Number(_)) => {
                let text = lua
                    .coerce_string(v)?
                    .ok_or_else(|| Failure::Error("invalid replacement value (a number)".into()))?;
                self.begin(src, &whole);
                Ok(self.push(&text.as_bytes(), budget)?)
            }
            other => Err(Failure::Error(format!(
                "invalid replacement value (a {})",
                basic_type_name(&other)
            ))),
        }
    }

    /// Appends replacement text `repl` for the match `whole`: `%0` is the match, `%1`-`%9`
    /// the captures (`%1` is the match when there are none), `%%` a `%`.
    fn expand(
        &mut self,
        repl: &[u8],
        src: &[u8],
        matcher: &Matcher<'_>,
        whole: Range<usize>,
        budget: &mut Budget,
    ) -> Result<(), Failure> {
        let mut rest = repl;
        while let Some(at) = rest.iter().position(|&c| c == b'%') {
            self.push(&rest[..at], budget)?;
            match rest.get(at + 1) {
                Some(b'%') => self.push(b"%", budget)?,
                Some(b'0') => self.push(&src[whole.clone()], budget)?,
                Some(&d @ b'1'..=b'9') => {
                    match matcher.capture(usize::from(d - b'1'), whole.clone())? {
                        Capture::Str(range) => self.push(&src[range], budget)?,
                        Capture::Position(p) => {
                            self.push((p + 1).to_string().as_bytes(), budget)?
                        }
                    }
                }
                _ => {
                    return Err(Failure::Error(
                        "invalid use of '%' in replacement string".into(),
                    ))
                }
            }
            rest = &rest[at + 2..];
        }
        Ok(self.push(rest, budget)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Steps each call gets in these tests (what the runtime passes).
    const STEPS: u64 = 10_000_000;

    /// Lua comparing the library's own functions (kept in `ORIG` before [`install`]) with
    /// ours on the same arguments, in two ways: called directly by `pcall`, and called
    /// from a Lua function (so errors carry a position and the local's name).
    const HARNESS: &str = r#"
local ORIG = ORIG
local NEW = { find = string.find, match = string.match, gmatch = string.gmatch, gsub = string.gsub }
local pack, unpack, concat = table.pack, table.unpack, table.concat
local format, tostring, type, mtype = string.format, tostring, type, math.type

local function show(v)
  if type(v) == "string" then return format("%q", v) end
  if type(v) == "number" then return mtype(v) .. " " .. tostring(v) end
  if v == nil or type(v) == "boolean" then return tostring(v) end
  return type(v)
end

local function render(r)
  local out = {}
  for i = 1, r.n do out[i] = show(r[i]) end
  return "(" .. concat(out, ", ") .. ")"
end

-- gsub replacements named by a marker, built afresh for each run (each has its log).
local function replacement(marker, log)
  if marker == "FN" then
    return function(...)
      log[#log + 1] = render(pack(...))
      local k = #log % 4
      if k == 0 then return nil end
      if k == 1 then return "<" .. tostring((...)) .. ">" end
      if k == 2 then return #log * 1.5 end
      return false
    end
  elseif marker == "TBL" then
    return setmetatable({ a = "A", b = 2, c = false, ["("] = "paren", [1] = "one", [3] = 3.25 },
      { __index = function(_, k) log[#log + 1] = "index " .. show(k) end })
  elseif marker == "BADFN" then
    return function() return {} end
  elseif marker == "TRUEFN" then
    return function() return true end
  elseif marker == "ERRFN" then
    return function(s) error("callback failed on " .. tostring(s)) end
  end
  return marker
end

local function via(f, ...)
  local r = pack(f(...))
  return unpack(r, 1, r.n)
end

local function outcome(f, name, args, through)
  local log = {}
  local a = {}
  for i = 1, args.n do a[i] = args[i] end
  if name == "gsub" then a[3] = replacement(a[3], log) end
  local call = f
  if name == "gmatch" then
    call = function(...)
      local it = f(...)
      local results = {}
      for _ = 1, 60 do
        local r = pack(it())
        results[#results + 1] = render(r)
        if r.n == 0 or r[1] == nil then break end
      end
      return concat(results, " ")
    end
  end
  local r
  if through then
    r = pack(pcall(through, call, unpack(a, 1, args.n)))
  else
    r = pack(pcall(call, unpack(a, 1, args.n)))
  end
  local text = render(r)
  if #log > 0 then text = text .. " log: " .. concat(log, "; ") end
  return text
end

-- Called straight from pcall, the library's functions are named by where they are found
-- in the loaded modules; the originals no longer are (ours replaced them), so Lua names
-- them '?' where ours say 'string.find' (as the originals do when in place).
local function normalize(text, name)
  return (ORIG.gsub(text, "to '%?'", "to 'string." .. name .. "'"))
end

CASES = 0
-- How the cases turned out with Lua's functions: errors, matches (a first result that
-- is not nil), and no match.
ERRORS, MATCHES, MISSES = 0, 0, 0

function compare(name, args)
  CASES = CASES + 1
  for _, through in ipairs({ false, via }) do
    local theirs = normalize(outcome(ORIG[name], name, args, through), name)
    if not through then
      local head = theirs:sub(1, 8)
      if head == "(false, " then ERRORS = ERRORS + 1
      elseif theirs:sub(1, 11) == "(true, nil)" or theirs:sub(1, 13) == "(true, \"(nil)" then MISSES = MISSES + 1
      else MATCHES = MATCHES + 1 end
    end
    local ours = outcome(NEW[name], name, args, through)
    if theirs ~= ours then
      return name .. render(args) .. (through and " (from Lua)" or "")
        .. "\n    lua:  " .. theirs .. "\n    ours: " .. ours
    end
  end
end

function compare_args(name, n, ...)
  local args = pack(...)
  args.n = n
  return compare(name, args)
end
"#;

    /// The table-driven cases: `C(name, args...)`.
    const CASES: &str = r#"
local cases = {}
local pack = table.pack
local function C(name, ...) cases[#cases + 1] = { name = name, args = pack(...) } end
local all = {}
for i = 0, 255 do all[#all + 1] = string.char(i) end
all = table.concat(all)

-- find: plain searches and init
C("find", "hello world", "o w")
C("find", "hello world", "o", 6)
C("find", "hello world", "l", -3)
C("find", "hello world", "l", -100)
C("find", "hello world", "l", 0)
C("find", "hello world", "", 11)
C("find", "hello world", "", 12)
C("find", "hello world", "", 13)
C("find", "hello world", "", 100)
C("find", "hello world", "xyz")
C("find", "hello world", "world", 1, true)
C("find", "a.b", ".", 1, true)
C("find", "a.b", "%.", 1)
C("find", "a+b", "+", 1, true)
C("find", "a+b", "a+", 1, 1)
C("find", "a+b", "a+", 1, false)
C("find", "a+b", "a+", nil, nil)
C("find", "a+b", "a+", nil, "yes")
C("find", "", "")
C("find", "", "", 1, true)
C("find", "", "", 2)
C("find", "", "a")
C("find", "abc", "", -1)
C("find", "abc", "", -4)
C("find", "abc", "c", -1, true)
C("find", ("ab"):rep(100) .. "abc", ("ab"):rep(40) .. "c", 1, true)
C("find", ("ab"):rep(100), ("ab"):rep(40) .. "c", 1, true)
C("find", ("a"):rep(200), ("a"):rep(70), 5, true)
C("find", "aabaabaaab", "aaab", 1, true)
C("find", "abc\0def", "\0d", 1, true)
-- argument handling
C("find", 12345, 34)
C("find", 1.5, ".")
C("find", 1e100, "e")
C("find", -0.0, "-")
C("find", "x", 2^53)
C("find", "abc", "b", "2")
C("find", "abc", "b", " 0x2 ")
C("find", "abc", "b", "x")
C("find", "abc", "b", "1.5")
C("find", "abc", "b", 1.5)
C("find", "abc", "b", 2.0)
C("find", "abc", "b", 2^63)
C("find", "abc", "b", math.maxinteger)
C("find", "abc", "b", math.mininteger)
C("find", "abc", "b", {})
C("find", "abc", "b", true)
C("find", nil, "a")
C("find", "a")
C("find")
C("find", {}, "a")
C("find", setmetatable({}, { __name = "MyType" }), "a")
C("find", "a", true)
C("find", "a", print)
C("find", "a", "a", nil)
-- repetitions and anchors
C("find", "aaab", "a-b")
C("find", "aaab", "a*b")
C("find", "aaab", "a+b")
C("find", "aaab", "a?b")
C("find", "aaab", "^a?b")
C("find", "aaab", "^a*b$")
C("find", "aaab", "^a-$")
C("find", "aaab", "^a-b$")
C("find", "aaab", "b$")
C("find", "aaab", "a$")
C("find", "aaab", ".-")
C("find", "aaab", ".-$")
C("find", "aaab", "a*", 5)
C("find", "aaab", "a*", 4)
C("find", "a$b", "$b")
C("find", "a$b", "a$b")
C("find", "a^b", "a^b")
C("find", "a^b", "^b", 3)
C("find", "a^b", "%^b")
C("find", "ab", "^")
C("find", "ab", "$")
C("find", "ab", "^$")
C("find", "", "^$")
C("find", "*a", "*a")
C("find", "+a", "+a")
C("find", "-a", "-a")
C("find", "?a", "?a")
C("find", "a**", "a**")
C("find", "ab", "b*")
C("find", "ab", "a-")
C("find", "xyz", "[xyz]-z")
C("find", "  trim me  ", "^%s*(.-)%s*$")
C("find", "", "^%s*(.-)%s*$")
-- captures
C("find", "key = value", "(%w+)%s*=%s*(%w+)")
C("find", "key = value", "()(%w+)()")
C("find", "key = value", "()")
C("find", "key = value", "()", 12)
C("find", "key = value", "(k)(e)(y)")
C("find", "key = value", "((k)(e))(y)")
C("find", "abcabc", "(abc)%1")
C("find", "abcab", "(abc)%1")
C("find", "abb", "(a)(b)%2")
C("find", "aa", "(a)%1?")
C("find", "xax", "()%1")
C("find", "aa", "(a%1)")
C("find", "a", "%1")
C("find", "a", "%0")
C("find", "a", "(a)%9")
C("find", "abab", "(a(b)%2)")
C("find", "a", "(a")
C("find", "b", "(a")
C("find", "a", "(()")
C("find", "a", "a)")
C("find", "", "a)")
C("find", "x", ")")
C("find", "x", "x)")
C("find", "x", "()x)")
C("find", "a", ("()"):rep(32))
C("find", "a", ("()"):rep(33))
C("find", ("a"):rep(40), ("(a)"):rep(32))
C("find", ("a"):rep(40), ("(a)"):rep(33))
C("find", "b", ("(a)"):rep(33))
C("find", ("a"):rep(300), ("a?"):rep(199))
C("find", ("a"):rep(300), ("a?"):rep(200))
C("find", ("a"):rep(300), ("a?"):rep(300))
C("find", ("a"):rep(10), ("(a*)"):rep(10))
-- %b and %f
C("find", "THE (quick) fox", "%((%a+)%)")
C("find", "f(a(b)c)d", "%b()")
C("find", "f(a(b c)d", "%b()")
C("find", "f)(x)", "%b()")
C("find", "\"q\" x", '%b""')
C("find", "aXbXc", "%bXX")
C("find", "[[x]]", "%b[]")
C("find", "", "%b()")
C("find", "a", "%b")
C("find", "a", "%b(")
C("find", "a", "x%b(")
C("find", "(a)", "%b()%b()")
C("find", "THE (quick) fox", "%f[%a]%a+")
C("find", "THE (quick) fox", "%f[%a]%a+", 2)
C("find", "THE (quick) fox", "%f[%A]")
C("find", "hello", "%f[%l]")
C("find", "hello", "%f[%z]")
C("find", "hello", "%f[^%z]")
C("find", "", "%f[%z]")
C("find", "a", "%f")
C("find", "a", "%fa")
C("find", "a", "%f[")
C("find", "a", "%f[a")
C("find", "b", "x%f[a")
C("find", "a b", "%f[%w]%w+%f[%W]")
-- classes over every byte, escapes and sets
for cl in ("acdglpsuwxzACDGLPSUWXZ"):gmatch(".") do
  C("find", all, "%" .. cl)
  C("find", all, "%" .. cl .. "+")
  C("gsub", all, "%" .. cl, "")
  C("gsub", all, "[%" .. cl .. "]", "")
  C("gsub", all, "[^%" .. cl .. "]", "")
end
C("gsub", all, ".", "")
C("gsub", all, "%.", "")
C("gsub", all, "%q", "")
C("gsub", all, "%Q", "")
C("gsub", all, "[%q]", "")
C("gsub", all, "%_", "")
C("gsub", all, "[\0-\31\127-\255]", "")
C("gsub", all, "[z-a]", "")
C("gsub", all, "[a-c%d_-]", "")
C("gsub", all, "[%a-]", "")
C("gsub", all, "[-%a]", "")
C("gsub", all, "[]]", "")
C("gsub", all, "[^]]", "")
C("gsub", all, "[]-a]", "")
C("gsub", all, "[%]]", "")
C("gsub", all, "[%%]", "")
C("gsub", all, "[a-%%]", "")
C("gsub", all, "[%a-z]", "")
C("gsub", all, "[a-]", "")
C("gsub", all, "[^%s%d]", "")
C("gsub", all, "[^^]", "")
C("gsub", all, "[a^]", "")
C("gsub", all, "[]", "")
C("gsub", all, "[^]", "")
C("gsub", all, "[", "")
C("gsub", all, "[a", "")
C("gsub", all, "[^", "")
C("gsub", all, "[%", "")
C("gsub", all, "[a%]", "")
C("gsub", all, "%", "")
C("gsub", "", "a%", "")
C("find", "b", "a%")
C("find", "a", "a%")
C("find", "é", "%a")
C("find", "\200", "%W")
-- match
C("match", "hello world", "(h)(e)")
C("match", "hello world", "o")
C("match", "hello world", "")
C("match", "hello world", "()", 4)
C("match", "hello world", "()", 12)
C("match", "hello world", "()", 13)
C("match", "hello world", "()", 0)
C("match", "hello world", "()", -100)
C("match", "hello world", "^(h)(e)$")
C("match", "hello world", "^(%a+)")
C("match", "hello world", "^(%a+)", 7)
C("match", "hello world", "(%a+)$")
C("match", "hello world", "((l)(l))")
C("match", "2024-01-15", "(%d+)-(%d+)-(%d+)")
C("match", "  x  ", "^%s*(.-)%s*$")
C("match", "key=", "(%w+)=(%w*)")
C("match", "a", "(a")
C("match", "a", "()a()")
C("match", "a", "[")
C("match", 42, 2)
C("match", "x", "x", 1, "ignored")
C("match")
-- gmatch
C("gmatch", "one two  three", "%a+")
C("gmatch", "a=1, b=2, c=3", "(%w+)=(%w+)")
C("gmatch", "abc", "")
C("gmatch", "abc", "()")
C("gmatch", "abc", "a*")
C("gmatch", "aaa", "a-")
C("gmatch", "baaac", "a*")
C("gmatch", "abc", "", 2)
C("gmatch", "abc", "", 4)
C("gmatch", "abc", "", 5)
C("gmatch", "abc", "", 0)
C("gmatch", "abc", "", -1)
C("gmatch", "abc", "", -10)
C("gmatch", "abc", ".", "2")
C("gmatch", "abc", ".", 1.5)
C("gmatch", "^a^a", "^a")
C("gmatch", "abc", "c$")
C("gmatch", "a$c", "$c")
C("gmatch", "abc", "(")
C("gmatch", "abc", "x(")
C("gmatch", "abc", "[")
C("gmatch", "abc", "%")
C("gmatch", "abc", "%1")
C("gmatch", "abc")
C("gmatch", nil, "a")
C("gmatch", 1234, "%d")
C("gmatch", "(a)(b)", "%b()")
C("gmatch", "THE (quick) fox", "%f[%a]%a+")
-- gsub with text replacements
C("gsub", "hello world", "o", "0")
C("gsub", "hello world", "(o)", "[%1]")
C("gsub", "hello world", "o", "[%1]")
C("gsub", "hello world", "o", "[%0]")
C("gsub", "hello world", "o", "[%2]")
C("gsub", "hello world", "(o)", "[%2]")
C("gsub", "hello world", "(o)()", "[%2]")
C("gsub", "hello world", "()", "%1")
C("gsub", "hello world", "o", "%%")
C("gsub", "hello world", "o", "%")
C("gsub", "hello world", "o", "a%")
C("gsub", "hello world", "o", "%x")
C("gsub", "hello world", "x", "%x")
C("gsub", "hello world", "(o", "x")
C("gsub", "hello world", "(o", "%1")
C("gsub", "hello world", "(o", "%0")
C("gsub", "hello world", "(h)(e)(l)(l)(o)( )(w)(o)(r)(l)", "%9%8%7%6%5%4%3%2%1%0")
C("gsub", "hello world", "%w+", "%0 %0")
C("gsub", "hello world", "(%w+) (%w+)", "%2 %1")
C("gsub", "hello world", "", "-")
C("gsub", "hello world", "l*", "-")
C("gsub", "hello world", "l-", "-")
C("gsub", "hello world", "^", "-")
C("gsub", "hello world", "$", "-")
C("gsub", "hello world", "^h", "H")
C("gsub", "hello world", "^l", "L")
C("gsub", "hello world", "^l*", "L")
C("gsub", "hello", "l", "L", 0)
C("gsub", "hello", "l", "L", 1)
C("gsub", "hello", "l", "L", -1)
C("gsub", "hello", "l", "L", 2.0)
C("gsub", "hello", "l", "L", "1")
C("gsub", "hello", "l", "L", 2.5)
C("gsub", "hello", "l", "L", "x")
C("gsub", "hello", "l", "L", math.maxinteger)
C("gsub", "hello", "", "x", 3)
C("gsub", "hello", "l", 7)
C("gsub", "hello", "l", 1.5)
C("gsub", "hello", "l", -0.0)
C("gsub", 123, "2", "x")
C("gsub", 123, "x", "y")
C("gsub", 123, "2", 4)
C("gsub", "hello", 1, 2)
C("gsub", "hello", "l")
C("gsub", "hello", "l", nil)
C("gsub", "hello", "l", true)
C("gsub", "hello", "l", print, {})
C("gsub", "hello", "l", "x", {})
C("gsub", "hello", "l", true, "x")
C("gsub", nil, "l", "x")
C("gsub", "", "", "x")
C("gsub", "", "x*", "y")
C("gsub", "abc", "%w", "%1%1", 2)
C("gsub", "abc\0def", "%z", "<0>")
C("gsub", "a,b,,c", ",", ";")
C("gsub", "a,b,,c", "[^,]*", "<%0>")
C("gsub", "a,b,,c", "[^,]-", "<%0>")
-- gsub with tables and functions
C("gsub", "abc(x)", "%w", "TBL")
C("gsub", "abc(x)", "(%w)(%w)", "TBL")
C("gsub", "abc(x)", "()", "TBL")
C("gsub", "abc(x)", "%(", "TBL")
C("gsub", "abc", "(a", "TBL")
C("gsub", "abc", "", "TBL")
C("gsub", "hello world", "%w+", "FN")
C("gsub", "hello world", "(%w)(%w*)", "FN")
C("gsub", "hello world", "()(o)()", "FN")
C("gsub", "hello world", "", "FN")
C("gsub", "hello world", "o", "FN", 1)
C("gsub", "hello world", "(o", "FN")
C("gsub", "hello world", "o", "BADFN")
C("gsub", "hello world", "o", "TRUEFN")
C("gsub", "hello world", "o", "ERRFN")
C("gsub", "hello world", "x", "ERRFN")
return cases
"#;

    /// A state with the whole standard library, the original functions kept in `ORIG`,
    /// ours installed and the comparison harness loaded.
    fn harness() -> Lua {
        let lua = Lua::new();
        lua.load(
            "ORIG = { find = string.find, match = string.match, \
                      gmatch = string.gmatch, gsub = string.gsub }",
        )
        .exec()
        .unwrap();
        install(&lua, STEPS).unwrap();
        lua.load(HARNESS).set_name("=harness").exec().unwrap();
        lua
    }

    #[test]
    fn agrees_with_lua_on_the_table_of_cases() {
        let lua = harness();
        let cases: Table = lua.load(CASES).set_name("=cases").eval().unwrap();
        let compare: Function = lua.globals().get("compare").unwrap();
        let mut mismatches = Vec::new();
        for case in cases.sequence_values::<Table>() {
            let case = case.unwrap();
            let name: String = case.get("name").unwrap();
            let args: Table = case.get("args").unwrap();
            if let Some(text) = compare.call::<Option<String>>((name, args)).unwrap() {
                mismatches.push(text);
            }
        }
        let total: i64 = lua.globals().get("CASES").unwrap();
        assert!(total > 300, "{total} cases");
        assert!(
            mismatches.is_empty(),
            "{} of {total} cases differ:\n{}",
            mismatches.len(),
            mismatches.join("\n")
        );
    }

    /// A small deterministic generator (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[self.below(items.len())]
        }
    }

    /// Pieces random patterns are made of: classes, sets, captures, anchors, the
    /// special items, repetition marks and stray magic characters.
    const PIECES: &[&str] = &[
        "a", "b", "c", "a", "b", ".", "%a", "%d", "%s", "%w", "%W", "%p", "%l", "%u", "%x", "%z",
        "[ab]", "[^a]", "[a-c]", "[%a_]", "[]]", "[^%d]", "(", ")", "(", ")", "()", "%1", "%2",
        "%b()", "%bab", "%f[a]", "%f[%w]", "%f[^a]", "*", "+", "-", "?", "*", "+", "-", "?", "^",
        "$", "%", "[", "]", "%%", "%.", "%(", " ", "1", "_",
    ];

    /// Bytes random subjects are made of.
    const SUBJECT: &[u8] = b"abcabc()_ 1A.%\0";

    /// Text replacements for random `gsub` cases (and markers of the harness).
    const REPLACEMENTS: &[&str] = &[
        "<%0>", "%1", "%2-%1", "x", "", "%%", "%", "%a", "FN", "TBL", "FN",
    ];

    #[test]
    fn agrees_with_lua_on_random_patterns() {
        let lua = harness();
        let compare: Function = lua.globals().get("compare_args").unwrap();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut mismatches = Vec::new();
        const CASES: usize = 5_000;
        for _ in 0..CASES {
            let mut pattern = String::new();
            if rng.below(6) == 0 {
                pattern.push('^');
            }
            for _ in 0..1 + rng.below(6) {
                let piece: &str = rng.pick(PIECES);
                pattern.push_str(piece);
            }
            let subject: Vec<u8> = (0..rng.below(13)).map(|_| rng.pick(SUBJECT)).collect();
            let subject = Value::String(lua.create_string(&subject).unwrap());
            let pattern = Value::String(lua.create_string(&pattern).unwrap());
            let init = match rng.below(4) {
                0 => Value::Integer(rng.below(29) as i64 - 14),
                _ => Value::Nil,
            };
            let plain = Value::Boolean(rng.below(8) == 0);
            let repl = Value::String(lua.create_string(rng.pick(REPLACEMENTS)).unwrap());
            let max = match rng.below(3) {
                0 => Value::Integer(rng.below(5) as i64 - 1),
                _ => Value::Nil,
            };
            let calls: [(&str, Vec<Value>); 4] = [
                (
                    "find",
                    vec![subject.clone(), pattern.clone(), init.clone(), plain],
                ),
                (
                    "match",
                    vec![subject.clone(), pattern.clone(), init.clone()],
                ),
                ("gmatch", vec![subject.clone(), pattern.clone(), init]),
                ("gsub", vec![subject, pattern, repl, max]),
            ];
            for (name, args) in calls {
                let mut values = MultiValue::new();
                values.push_back(Value::String(lua.create_string(name).unwrap()));
                values.push_back(Value::Integer(args.len() as i64));
                values.extend(args);
                if let Some(text) = compare.call::<Option<String>>(values).unwrap() {
                    mismatches.push(text);
                }
            }
        }
        let total: i64 = lua.globals().get("CASES").unwrap();
        assert_eq!(total, 4 * CASES as i64);
        let (errors, matches, misses): (i64, i64, i64) =
            lua.load("return ERRORS, MATCHES, MISSES").eval().unwrap();
        println!("{errors} errors, {matches} matches, {misses} misses");
        // The generator reaches all three outcomes often.
        assert!(errors > total / 10 && matches > total / 5 && misses > total / 10);
        assert!(
            mismatches.is_empty(),
            "{} of {total} calls differ; the first:\n{}",
            mismatches.len(),
            mismatches[..mismatches.len().min(30)].join("\n")
        );
    }

    #[test]
    fn catastrophic_backtracking_runs_out_of_budget() {
        let mut budget = Budget::new(STEPS);
        let subject = "a".repeat(5000);
        assert_eq!(
            find(subject.as_bytes(), b".-.-.-.-b", 0, &mut budget),
            Err(PatternError::TooExpensive)
        );
        assert_eq!(budget.remaining(), 0);
        let mut budget = Budget::new(STEPS);
        let subject = "a".repeat(1_000_000);
        assert_eq!(
            find(subject.as_bytes(), b"a-b", 0, &mut budget),
            Err(PatternError::TooExpensive)
        );

        let lua = Lua::new();
        install(&lua, STEPS).unwrap();
        for script in [
            r#"return string.rep("a", 5000):find(".-.-.-.-b")"#,
            r#"return ("a"):rep(1e6):find("a-b")"#,
            r#"return string.find(string.rep("a", 5000), ".-.-.-.-b")"#,
            r#"return ("a"):rep(5000):match(".-.-.-.-b")"#,
            r#"return ("a"):rep(5000):gsub(".-.-.-.-b", "")"#,
            r#"for x in ("a"):rep(5000):gmatch(".-.-.-.-b") do end"#,
            r#"return ("a"):rep(5000):gsub("x", function() end) .. ("a"):rep(1e6):gsub("a-b", "")"#,
        ] {
            let err = lua.load(script).exec().unwrap_err();
            assert!(err.to_string().contains(BUDGET_MESSAGE), "{script}: {err}");
        }
        // A script sees a Lua error, a string, and the state stays usable.
        let (ok, message): (bool, String) = lua
            .load(r#"return pcall(string.find, ("a"):rep(5000), ".-.-.-.-b")"#)
            .eval()
            .unwrap();
        assert!(!ok);
        assert_eq!(message, BUDGET_MESSAGE);
        let n: i64 = lua.load(r#"return ("abc"):find("c")"#).eval().unwrap();
        assert_eq!(n, 3);
    }

    #[test]
    fn typical_patterns_stay_well_within_budget() {
        // Trimming 1 KB of text with spaces inside and around.
        let words = "lorem ipsum dolor sit amet ".repeat(40);
        let text = format!("   \t{}\n  ", &words[..993]);
        assert_eq!(text.len(), 1000);
        let mut budget = Budget::new(STEPS);
        let (_, _, captures) = find(text.as_bytes(), b"^%s*(.-)%s*$", 0, &mut budget)
            .unwrap()
            .unwrap();
        assert_eq!(
            captures,
            vec![Capture::Str(4..4 + words[..993].trim_end().len())]
        );
        let trim = STEPS - budget.remaining();

        // Every key=value pair of a 10 KB query string, in one budget for the whole loop.
        let mut query = String::new();
        let mut i = 0;
        while query.len() < 10_000 {
            query.push_str(&format!("key{i}=value{}&", i * 7919));
            i += 1;
        }
        let mut budget = Budget::new(STEPS);
        let mut matcher = Matcher::new(query.as_bytes(), b"(%w+)=(%w+)", false);
        let (mut pos, mut pairs) = (0, 0);
        while let Some((start, end)) = matcher.search(pos, &mut budget).unwrap() {
            assert_eq!(
                matcher.capture(0, start..end).unwrap(),
                Capture::Str(start..start + format!("key{pairs}").len())
            );
            pairs += 1;
            pos = end;
        }
        assert_eq!(pairs, i);
        let scan = STEPS - budget.remaining();
        assert!(trim < STEPS / 100, "trim took {trim} steps");
        assert!(scan < STEPS / 100, "the query scan took {scan} steps");

        // The same through Lua, with the budget the runtime gives.
        let lua = Lua::new();
        install(&lua, STEPS).unwrap();
        lua.globals().set("text", text.as_str()).unwrap();
        lua.globals().set("query", query.as_str()).unwrap();
        let (trimmed, n): (String, i64) = lua
            .load(
                r#"
                local n = 0
                for k, v in query:gmatch("(%w+)=(%w+)") do n = n + 1 end
                return text:match("^%s*(.-)%s*$"), n"#,
            )
            .eval()
            .unwrap();
        assert_eq!(trimmed, text.trim());
        assert_eq!(n, i as i64);
    }

    #[test]
    fn metered_calls_add_up_in_the_shared_counter() {
        let lua = Lua::new();
        let meter = Rc::new(Cell::new(100));
        install_metered(&lua, STEPS, meter.clone(), 1_000).unwrap();
        // Cheap calls are charged for their steps, a unit per thousand.
        lua.load(r#"for i = 1, 100 do assert(("key=value"):match("^(%w+)=(%w+)$")) end"#)
            .exec()
            .unwrap();
        let after = meter.get();
        assert!((90..100).contains(&after), "{after} units left");
        // Calls each far within `steps_per_call` run out of the shared budget together.
        let err = lua
            .load(r#"calls = 0 for i = 1, 1000 do ("a"):rep(100):find("a-b") calls = i end"#)
            .exec()
            .unwrap_err();
        assert!(err.to_string().contains(BUDGET_MESSAGE), "{err}");
        let calls: i64 = lua.globals().get("calls").unwrap();
        assert!((2..100).contains(&calls), "{calls} calls");
        assert_eq!(meter.get(), 0);
        // Plain searches cost nothing; with the counter refilled, matching works again.
        let at: i64 = lua
            .load(r#"return ("a.b"):find(".", 1, true)"#)
            .eval()
            .unwrap();
        assert_eq!(at, 2);
        meter.set(10);
        let at: i64 = lua.load(r#"return ("a.b"):find("%.")"#).eval().unwrap();
        assert_eq!(at, 2);
    }

    /// A plain search the simple way.
    fn naive_find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
        (from..=hay.len().saturating_sub(needle.len()))
            .find(|&i| hay[i..].starts_with(needle))
            .filter(|&i| i + needle.len() <= hay.len())
    }

    #[test]
    fn plain_search_finds_what_a_simple_search_finds() {
        let mut rng = Rng(42);
        for _ in 0..20_000 {
            let hay: Vec<u8> = (0..rng.below(40)).map(|_| b"aab"[rng.below(3)]).collect();
            let needle: Vec<u8> = (0..rng.below(6)).map(|_| b"aab"[rng.below(3)]).collect();
            let from = rng.below(hay.len() + 1);
            assert_eq!(
                plain_find(&hay, &needle, from),
                naive_find(&hay, &needle, from),
                "{hay:?} {needle:?} {from}"
            );
        }
        // Long needles (the borders table on the heap) and the worst case of a simple
        // search: both stay linear.
        let hay = "a".repeat(1_000_000);
        let needle = format!("{}b", "a".repeat(500_000));
        assert_eq!(plain_find(hay.as_bytes(), needle.as_bytes(), 0), None);
        let hay = format!("{hay}b");
        assert_eq!(
            plain_find(hay.as_bytes(), needle.as_bytes(), 0),
            Some(500_000)
        );
        let lua = Lua::new();
        install(&lua, 1).unwrap();
        let at: i64 = lua
            .load(r#"return (("a"):rep(1e6) .. "b"):find(("a"):rep(5e5) .. "b", 1, true)"#)
            .eval()
            .unwrap();
        assert_eq!(at, 500_001);
    }

    #[test]
    fn errors_are_strings_at_the_callers_position() {
        // The same scripts in a state with Lua's functions and in one with ours.
        let scripts = [
            r#"local ok, e = pcall(function() local r = ("x"):find({}) return r end) return e"#,
            r#"local ok, e = pcall(function() local r = ("x"):gsub() return r end) return e"#,
            r#"local ok, e = pcall(function() local r = string.find(nil) return r end) return e"#,
            r#"local ok, e = pcall(function() local f = string.match local r = f("x", "%") return r end) return e"#,
            r#"local ok, e = pcall(function()
                 local r = ("x"):rep(3):gsub("x", "%2")
                 return r
               end)
               return e"#,
            r#"local ok, e = pcall(function() for x in ("x"):gmatch("(") do end end) return e"#,
            r#"local ok, e = pcall(function() local it = ("x"):gmatch(); return 1 end) return e"#,
            r#"local ok, e = pcall(function() local r = ("x"):gsub("x", {x = {}}) return r end) return e"#,
            r#"local ok, e = pcall(function() local r = ("x"):find("x", 1.5) return r end) return e"#,
            r#"local ok, e = pcall(function() local r = string.gsub("x", "x", "y", "z") return r end) return e"#,
            r#"local ok, e = pcall(string.find) return e"#,
            r#"return type(select(2, pcall(string.find, "a", "(")))"#,
            r#"local ok, e = pcall(string.find, "a", thing) return e"#,
            r#"return coroutine.wrap(function() local ok, e = pcall(function() local r = ("x"):match({}) return r end) return e end)()"#,
            r#"return coroutine.wrap(function() local ok, e = pcall(function() local r = ("x"):match("%") return r end) return e end)()"#,
            r#"return select(2, coroutine.resume(coroutine.create(function() local r = ("x"):gsub("x", function() coroutine.yield() end) return r end)))"#,
            r#"local n = 0
               local co = coroutine.wrap(function()
                 for w in ("a b c"):gmatch("%a") do coroutine.yield(w) end
               end)
               return co() .. co() .. co()"#,
        ];
        struct Thing;
        impl mlua::UserData for Thing {}
        let theirs = Lua::new();
        let ours = Lua::new();
        install(&ours, STEPS).unwrap();
        for lua in [&theirs, &ours] {
            lua.globals().set("thing", Thing).unwrap();
        }
        for script in scripts {
            let expected: String = theirs.load(script).set_name("=chunk").eval().unwrap();
            let got: String = ours.load(script).set_name("=chunk").eval().unwrap();
            assert_eq!(got, expected, "{script}");
        }
        // A tail call leaves no frame of the caller: the position is its caller's.
        let script = r#"local ok, e = pcall(function() return ("x"):find("%") end) return e"#;
        let expected: String = theirs.load(script).set_name("=chunk").eval().unwrap();
        let got: String = ours.load(script).set_name("=chunk").eval().unwrap();
        assert_eq!(expected, "chunk:1: malformed pattern (ends with '%')");
        assert_eq!(got, "malformed pattern (ends with '%')");
    }

    #[test]
    fn gsub_callbacks_errors_and_memory_errors_pass_through() {
        let lua = Lua::new();
        install(&lua, STEPS).unwrap();
        let message: String = lua
            .load(
                r#"local ok, e = pcall(string.gsub, "abc", "b", function() error("boom") end)
                   return e"#,
            )
            .set_name("=chunk")
            .eval()
            .unwrap();
        assert_eq!(message, "chunk:1: boom");
        let message: String = lua
            .load(
                r#"local t = setmetatable({}, { __index = function() error("no key", 0) end })
                   local ok, e = pcall(string.gsub, "abc", "b", t)
                   return e"#,
            )
            .eval()
            .unwrap();
        assert_eq!(message, "no key");
        // A nested call of ours that runs out of budget inside a callback.
        let err = lua
            .load(
                r#"return ("x"):gsub("x", function() return ("a"):rep(5000):find(".-.-.-.-b") end)"#,
            )
            .exec()
            .unwrap_err();
        assert!(err.to_string().contains(BUDGET_MESSAGE), "{err}");

        // The host's instruction budget running out inside a replacement function reaches
        // the host as its own error.
        lua.set_global_hook(
            mlua::HookTriggers::new().every_nth_instruction(1000),
            |_, _| Err(mlua::Error::RuntimeError(BUDGET_MESSAGE.into())),
        )
        .unwrap();
        let err = lua
            .load(r#"return ("x"):gsub("x", function() while true do end end)"#)
            .exec()
            .unwrap_err();
        assert!(err.to_string().contains(BUDGET_MESSAGE), "{err}");
        lua.remove_global_hook();

        // A result too big for the state's memory is the state's memory error.
        let lua = Lua::new();
        install(&lua, STEPS).unwrap();
        lua.set_memory_limit(lua.used_memory() + 512 * 1024)
            .unwrap();
        let err = lua
            .load(r#"local s = ("x"):rep(1000):gsub("x", ("y"):rep(1000))"#)
            .exec()
            .unwrap_err();
        let mut cause = &err;
        while let mlua::Error::CallbackError { cause: inner, .. } = cause {
            cause = inner;
        }
        assert!(matches!(cause, mlua::Error::MemoryError(_)), "{err:?}");
        // So is running out of memory inside a replacement function.
        let err = lua
            .load(r#"local s = ("x"):gsub("x", function() return ("y"):rep(1e7) end)"#)
            .exec()
            .unwrap_err();
        let mut cause = &err;
        while let mlua::Error::CallbackError { cause: inner, .. } = cause {
            cause = inner;
        }
        assert!(matches!(cause, mlua::Error::MemoryError(_)), "{err:?}");
        // A table raised by a replacement function reaches the script as that table.
        let same: bool = lua
            .load(
                r#"local t = {}
                   local ok, e = pcall(string.gsub, "x", "x", function() error(t) end)
                   return e == t"#,
            )
            .eval()
            .unwrap();
        assert!(same);
        // Output beyond the budget (a byte a step) fails before it is built.
        let lua = Lua::new();
        install(&lua, 100_000).unwrap();
        let err = lua
            .load(r#"local s = ("x"):rep(1000):gsub("x", ("y"):rep(1000))"#)
            .exec()
            .unwrap_err();
        assert!(err.to_string().contains(BUDGET_MESSAGE), "{err}");
    }

    #[test]
    fn method_calls_and_budget_per_call() {
        // The libraries a hook state has.
        let libs = mlua::StdLib::TABLE
            | mlua::StdLib::STRING
            | mlua::StdLib::MATH
            | mlua::StdLib::UTF8
            | mlua::StdLib::COROUTINE;
        let lua = Lua::new_with(libs, mlua::LuaOptions::default()).unwrap();
        install(&lua, 1_000).unwrap();
        // Each call has its own budget: many cheap calls are fine.
        let n: i64 = lua
            .load(
                r#"local n = 0
                   for i = 1, 1000 do if ("key=value"):match("^(%w+)=(%w+)$") then n = n + 1 end end
                   for k in ("a b c d e f g h"):gmatch("%a") do n = n + 1 end
                   return n"#,
            )
            .eval()
            .unwrap();
        assert_eq!(n, 1008);
        let err = lua
            .load(r#"return ("a"):rep(100):find(".-.-b")"#)
            .exec()
            .unwrap_err();
        assert!(err.to_string().contains(BUDGET_MESSAGE), "{err}");
    }
}
