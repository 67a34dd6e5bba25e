//! One finding of `relaychat doctor`: a level, the check's name, and plain words.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    pub check: &'static str,
    pub text: String,
}

impl Finding {
    pub fn ok(check: &'static str, text: impl Into<String>) -> Self {
        Self { level: Level::Ok, check, text: text.into() }
    }
    pub fn warn(check: &'static str, text: impl Into<String>) -> Self {
        Self { level: Level::Warn, check, text: text.into() }
    }
    pub fn fail(check: &'static str, text: impl Into<String>) -> Self {
        Self { level: Level::Fail, check, text: text.into() }
    }
}

/// `ok   relay address: ...`: the level first and fixed-width, so the FAIL lines stand out and
/// `grep ^FAIL` finds them.
impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        write!(f, "{level:<4} {}: {}", self.check, self.text)
    }
}
