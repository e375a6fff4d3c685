//! The IoT Hub query language subset operators use:
//!
//! ```text
//! SELECT * FROM devices [WHERE <condition>]
//! SELECT COUNT() [AS <name>] FROM devices [WHERE <condition>]
//! condition := term (OR term)* ; term := factor (AND factor)*
//! factor    := NOT factor | ( condition ) | IS_DEFINED(path) | STARTSWITH(path, 'text')
//!            | path (= | != | <> | < | <= | > | >=) literal
//! path      := deviceId | status | connectionState | tags.a.b | properties.desired.x | properties.reported.x
//! literal   := 'text' | "text" | number | true | false | null
//! ```
//! Conditions are evaluated against the service view of each twin.

use std::cmp::Ordering;

use serde_json::Value;

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// `Some(alias)` for `SELECT COUNT()`.
    pub count: Option<String>,
    /// The WHERE condition.
    pub condition: Option<Condition>,
}

/// A WHERE condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// Both.
    And(Box<Condition>, Box<Condition>),
    /// Either.
    Or(Box<Condition>, Box<Condition>),
    /// Negation.
    Not(Box<Condition>),
    /// The path exists.
    IsDefined(Vec<String>),
    /// The string at the path starts with the text.
    StartsWith(Vec<String>, String),
    /// A comparison.
    Compare(Vec<String>, Op, Value),
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=` or `<>`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Num(f64),
    Sym(&'static str),
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' || c == '"' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err("unterminated string".into()),
                    Some(&d) if d == c => {
                        i += 1;
                        break;
                    }
                    Some(&d) => {
                        s.push(d);
                        i += 1;
                    }
                }
            }
            out.push(Token::Str(s));
        } else if c.is_ascii_digit()
            || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            i += 1;
            while chars
                .get(i)
                .is_some_and(|d| d.is_ascii_digit() || *d == '.')
            {
                i += 1;
            }
            let s: String = chars.get(start..i).unwrap_or_default().iter().collect();
            out.push(Token::Num(
                s.parse().map_err(|_| format!("bad number '{s}'"))?,
            ));
        } else if c.is_alphanumeric() || c == '_' || c == '$' {
            let start = i;
            while chars.get(i).is_some_and(|d| {
                d.is_alphanumeric() || *d == '_' || *d == '.' || *d == '$' || *d == '-'
            }) {
                i += 1;
            }
            out.push(Token::Word(
                chars.get(start..i).unwrap_or_default().iter().collect(),
            ));
        } else {
            let two: String = chars.get(i..i + 2).unwrap_or_default().iter().collect();
            let sym = match two.as_str() {
                "!=" => Some("!="),
                "<>" => Some("!="),
                "<=" => Some("<="),
                ">=" => Some(">="),
                _ => None,
            };
            if let Some(s) = sym {
                out.push(Token::Sym(s));
                i += 2;
                continue;
            }
            let one = match c {
                '=' => "=",
                '<' => "<",
                '>' => ">",
                '(' => "(",
                ')' => ")",
                ',' => ",",
                '*' => "*",
                _ => return Err(format!("unexpected character '{c}'")),
            };
            out.push(Token::Sym(one));
            i += 1;
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.pos)
    }
    fn next(&mut self) -> Option<Token> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn word(&mut self, w: &str) -> bool {
        if matches!(self.peek(), Some(Token::Word(x)) if x.eq_ignore_ascii_case(w)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn sym(&mut self, s: &str) -> bool {
        if matches!(self.peek(), Some(Token::Sym(x)) if *x == s) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect_sym(&mut self, s: &str) -> Result<(), String> {
        if self.sym(s) {
            Ok(())
        } else {
            Err(format!("expected '{s}'"))
        }
    }
    fn path(&mut self) -> Result<Vec<String>, String> {
        match self.next() {
            Some(Token::Word(w)) => Ok(w.split('.').map(str::to_owned).collect()),
            _ => Err("expected a property path".into()),
        }
    }
    fn literal(&mut self) -> Result<Value, String> {
        match self.next() {
            Some(Token::Str(s)) => Ok(Value::String(s)),
            Some(Token::Num(n)) => {
                Ok(serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number))
            }
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("true") => Ok(Value::Bool(true)),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("false") => Ok(Value::Bool(false)),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("null") => Ok(Value::Null),
            _ => Err("expected a literal ('text', number, true, false, null)".into()),
        }
    }
    fn condition(&mut self) -> Result<Condition, String> {
        let mut left = self.term()?;
        while self.word("OR") {
            left = Condition::Or(Box::new(left), Box::new(self.term()?));
        }
        Ok(left)
    }
    fn term(&mut self) -> Result<Condition, String> {
        let mut left = self.factor()?;
        while self.word("AND") {
            left = Condition::And(Box::new(left), Box::new(self.factor()?));
        }
        Ok(left)
    }
    fn factor(&mut self) -> Result<Condition, String> {
        if self.word("NOT") {
            return Ok(Condition::Not(Box::new(self.factor()?)));
        }
        if self.sym("(") {
            let c = self.condition()?;
            self.expect_sym(")")?;
            return Ok(c);
        }
        if self.word("IS_DEFINED") {
            self.expect_sym("(")?;
            let p = self.path()?;
            self.expect_sym(")")?;
            return Ok(Condition::IsDefined(p));
        }
        if self.word("STARTSWITH") {
            self.expect_sym("(")?;
            let p = self.path()?;
            self.expect_sym(",")?;
            let Value::String(s) = self.literal()? else {
                return Err("STARTSWITH needs a string".into());
            };
            self.expect_sym(")")?;
            return Ok(Condition::StartsWith(p, s));
        }
        let p = self.path()?;
        let op = match self.next() {
            Some(Token::Sym("=")) => Op::Eq,
            Some(Token::Sym("!=")) => Op::Ne,
            Some(Token::Sym("<")) => Op::Lt,
            Some(Token::Sym("<=")) => Op::Le,
            Some(Token::Sym(">")) => Op::Gt,
            Some(Token::Sym(">=")) => Op::Ge,
            _ => return Err("expected a comparison operator".into()),
        };
        Ok(Condition::Compare(p, op, self.literal()?))
    }
}

/// Parse a query.
///
/// # Errors
/// A one-line description of what is wrong.
pub fn parse(text: &str) -> Result<Query, String> {
    let mut p = Parser {
        toks: tokens(text)?,
        pos: 0,
    };
    if !p.word("SELECT") {
        return Err("a query starts with SELECT".into());
    }
    let count = if p.sym("*") {
        None
    } else if p.word("COUNT") {
        p.expect_sym("(")?;
        p.expect_sym(")")?;
        Some(if p.word("AS") {
            match p.next() {
                Some(Token::Word(w)) => w,
                _ => return Err("expected a name after AS".into()),
            }
        } else {
            "$1".to_owned()
        })
    } else {
        return Err("only SELECT * and SELECT COUNT() are supported".into());
    };
    if !p.word("FROM") || !p.word("devices") {
        return Err("only FROM devices is supported".into());
    }
    let condition = if p.word("WHERE") {
        Some(p.condition()?)
    } else {
        None
    };
    if p.peek().is_some() {
        return Err("unexpected text after the query".into());
    }
    Ok(Query { count, condition })
}

fn lookup<'a>(twin: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(twin, |v, k| v.get(k.as_str()))
}

fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        _ => None,
    }
}

impl Condition {
    /// Whether a twin (service view) satisfies the condition.
    #[must_use]
    pub fn matches(&self, twin: &Value) -> bool {
        match self {
            Self::And(a, b) => a.matches(twin) && b.matches(twin),
            Self::Or(a, b) => a.matches(twin) || b.matches(twin),
            Self::Not(a) => !a.matches(twin),
            Self::IsDefined(p) => lookup(twin, p).is_some(),
            Self::StartsWith(p, s) => lookup(twin, p)
                .and_then(Value::as_str)
                .is_some_and(|v| v.starts_with(s.as_str())),
            Self::Compare(p, op, lit) => {
                let Some(v) = lookup(twin, p) else {
                    return false;
                };
                let Some(ord) = compare(v, lit) else {
                    return *op == Op::Ne;
                };
                match op {
                    Op::Eq => ord == Ordering::Equal,
                    Op::Ne => ord != Ordering::Equal,
                    Op::Lt => ord == Ordering::Less,
                    Op::Le => ord != Ordering::Greater,
                    Op::Gt => ord == Ordering::Greater,
                    Op::Ge => ord != Ordering::Less,
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_and_evaluates() {
        let twin = json!({"deviceId": "sensor-7", "status": "enabled", "tags": {"site": "lab", "floor": 2},
                          "properties": {"desired": {"telemetryDelay": "2"}, "reported": {"telemetryDelay": 2}}});
        let q = |t: &str| parse(t).unwrap().condition.is_none_or(|c| c.matches(&twin));
        assert!(q("SELECT * FROM devices"));
        assert!(q("SELECT * FROM devices WHERE tags.site = 'lab'"));
        assert!(q(
            "select * from devices where tags.floor >= 2 and properties.reported.telemetryDelay < 3"
        ));
        assert!(!q(
            "SELECT * FROM devices WHERE tags.site = 'lab' AND status = 'disabled'"
        ));
        assert!(q(
            "SELECT * FROM devices WHERE status = 'disabled' OR STARTSWITH(deviceId, 'sensor')"
        ));
        assert!(q(
            "SELECT * FROM devices WHERE NOT (tags.site != 'lab') AND IS_DEFINED(properties.desired.telemetryDelay)"
        ));
        assert!(!q("SELECT * FROM devices WHERE IS_DEFINED(tags.missing)"));
        assert!(q("SELECT * FROM devices WHERE tags.site <> 'home'"));
        assert_eq!(
            parse("SELECT COUNT() AS numberOfDevices FROM devices")
                .unwrap()
                .count
                .as_deref(),
            Some("numberOfDevices")
        );
        for bad in [
            "DELETE FROM devices",
            "SELECT * FROM modules",
            "SELECT * FROM devices WHERE",
            "SELECT * FROM devices WHERE tags.a = 'x",
            "SELECT * FROM devices WHERE a ~ 1",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
