//! The IoT Hub query language subset operators use:
//!
//! ```text
//! SELECT * FROM devices [WHERE <condition>]
//! SELECT <item>, … FROM devices [WHERE <condition>] [GROUP BY <path>, …]
//! item      := COUNT() [AS <name>] | path [AS <name>]
//! condition := term (OR term)* ; term := factor (AND factor)*
//! factor    := NOT factor | ( condition ) | IS_DEFINED(path) | STARTSWITH(path, 'text')
//!            | path (= | != | <> | < | <= | > | >=) literal
//! path      := deviceId | status | connectionState | tags.a.b | properties.desired.x | properties.reported.x
//! literal   := 'text' | "text" | number | true | false | null
//! ```
//! Conditions are evaluated against the service view of each twin. Without GROUP BY a
//! selection of paths projects each twin (a column is named after its alias or its last path
//! segment) and a lone `COUNT()` counts; with GROUP BY every selected path must be grouped and
//! each group gives one row with its values and its count, as IoT Hub does for
//! `SELECT properties.reported.telemetryDelay, COUNT() AS n FROM devices GROUP BY
//! properties.reported.telemetryDelay`.

use std::cmp::Ordering;

use serde_json::Value;

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// What the query runs over.
    pub source: Source,
    /// What each row holds; empty for `SELECT *`.
    pub select: Vec<Item>,
    /// The WHERE condition.
    pub condition: Option<Condition>,
    /// The GROUP BY paths.
    pub group_by: Vec<Vec<String>>,
}

/// What a query runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `FROM devices`: device twins.
    Devices,
    /// `FROM devices.modules`: module twins.
    Modules,
}

/// One item of a SELECT list.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// `COUNT() [AS name]` (default name `$1`).
    Count(String),
    /// A property path and the column name (its alias or its last segment).
    Path(Vec<String>, String),
}

/// How a query's rows are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One row per matching twin, the whole twin.
    Twins,
    /// One row per matching twin, the selected paths.
    Projection,
    /// One row: the count of matching twins.
    Count,
    /// One row per group.
    Groups,
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
    fn alias(&mut self) -> Result<Option<String>, String> {
        if !self.word("AS") {
            return Ok(None);
        }
        match self.next() {
            Some(Token::Word(w)) if !w.contains('.') => Ok(Some(w)),
            _ => Err("expected a name after AS".into()),
        }
    }
    fn item(&mut self) -> Result<Item, String> {
        if self.word("COUNT") {
            self.expect_sym("(")?;
            self.expect_sym(")")?;
            return Ok(Item::Count(
                self.alias()?.unwrap_or_else(|| "$1".to_owned()),
            ));
        }
        let path = self.path()?;
        let name = match self.alias()? {
            Some(a) => a,
            None => path.last().cloned().unwrap_or_default(),
        };
        Ok(Item::Path(path, name))
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

/// What is wrong with a query, in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(pub String);

/// Parse a query.
///
/// # Errors
/// [`QueryError`] describing what is wrong.
pub fn parse(text: &str) -> Result<Query, QueryError> {
    parse_text(text).map_err(QueryError)
}

fn parse_text(text: &str) -> Result<Query, String> {
    let mut p = Parser {
        toks: tokens(text)?,
        pos: 0,
    };
    if !p.word("SELECT") {
        return Err("a query starts with SELECT".into());
    }
    let mut select = Vec::new();
    if !p.sym("*") {
        loop {
            select.push(p.item()?);
            if !p.sym(",") {
                break;
            }
        }
    }
    if !p.word("FROM") {
        return Err("expected FROM devices or FROM devices.modules".into());
    }
    let source = if p.word("devices") {
        Source::Devices
    } else if p.word("devices.modules") {
        Source::Modules
    } else {
        return Err("only FROM devices and FROM devices.modules are supported".into());
    };
    let condition = if p.word("WHERE") {
        Some(p.condition()?)
    } else {
        None
    };
    let mut group_by = Vec::new();
    if p.word("GROUP") {
        if !p.word("BY") {
            return Err("expected BY after GROUP".into());
        }
        loop {
            group_by.push(p.path()?);
            if !p.sym(",") {
                break;
            }
        }
    }
    if p.peek().is_some() {
        return Err("unexpected text after the query".into());
    }
    let query = Query {
        source,
        select,
        condition,
        group_by,
    };
    query.check()?;
    Ok(query)
}

impl Query {
    fn check(&self) -> Result<(), String> {
        let counts = self
            .select
            .iter()
            .filter(|i| matches!(i, Item::Count(_)))
            .count();
        if self.group_by.is_empty() {
            if counts > 0 && self.select.len() > 1 {
                return Err("COUNT() with other columns needs GROUP BY".into());
            }
            return Ok(());
        }
        if self.select.is_empty() {
            return Err("SELECT * cannot be grouped; select the grouped paths and COUNT()".into());
        }
        for item in &self.select {
            if let Item::Path(path, _) = item
                && !self.group_by.contains(path)
            {
                return Err(format!(
                    "'{}' is selected but not in GROUP BY",
                    path.join(".")
                ));
            }
        }
        Ok(())
    }

    /// How the rows are made.
    #[must_use]
    pub fn shape(&self) -> Shape {
        if !self.group_by.is_empty() {
            Shape::Groups
        } else if self.select.is_empty() {
            Shape::Twins
        } else if matches!(self.select.first(), Some(Item::Count(_))) {
            Shape::Count
        } else {
            Shape::Projection
        }
    }

    /// Whether a twin (service view) is selected by the WHERE condition.
    #[must_use]
    pub fn selects(&self, twin: &Value) -> bool {
        self.condition.as_ref().is_none_or(|c| c.matches(twin))
    }

    /// A twin's row for [`Shape::Projection`]: the selected paths that it defines.
    #[must_use]
    pub fn project(&self, twin: &Value) -> Value {
        let mut row = serde_json::Map::new();
        for item in &self.select {
            if let Item::Path(path, name) = item
                && let Some(v) = lookup(twin, path)
            {
                row.insert(name.clone(), v.clone());
            }
        }
        Value::Object(row)
    }

    /// A twin's group key for [`Shape::Groups`]: the grouped values (null when undefined).
    #[must_use]
    pub fn group_key(&self, twin: &Value) -> Vec<Value> {
        self.group_by
            .iter()
            .map(|p| lookup(twin, p).cloned().unwrap_or(Value::Null))
            .collect()
    }

    /// The row of one group with `count` members (or the lone count row, with an empty key).
    #[must_use]
    pub fn group_row(&self, key: &[Value], count: u64) -> Value {
        let mut row = serde_json::Map::new();
        for item in &self.select {
            match item {
                Item::Count(name) => {
                    row.insert(name.clone(), Value::from(count));
                }
                Item::Path(path, name) => {
                    let at = self.group_by.iter().position(|g| g == path);
                    if let Some(v) = at.and_then(|i| key.get(i))
                        && !v.is_null()
                    {
                        row.insert(name.clone(), v.clone());
                    }
                }
            }
        }
        Value::Object(row)
    }
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
        let count = parse("SELECT COUNT() AS numberOfDevices FROM devices").unwrap();
        assert_eq!(count.shape(), Shape::Count);
        assert_eq!(count.group_row(&[], 3), json!({"numberOfDevices": 3}));
        let grouped = parse(
            "SELECT properties.reported.telemetryDelay, COUNT() AS n FROM devices \
             WHERE status = 'enabled' GROUP BY properties.reported.telemetryDelay",
        )
        .unwrap();
        assert_eq!(grouped.shape(), Shape::Groups);
        assert!(grouped.selects(&twin));
        let key = grouped.group_key(&twin);
        assert_eq!(key, vec![json!(2)]);
        assert_eq!(
            grouped.group_row(&key, 5),
            json!({"telemetryDelay": 2, "n": 5})
        );
        assert_eq!(
            grouped.group_row(&[Value::Null], 1),
            json!({"n": 1}),
            "an undefined group value is left out of the row"
        );
        let projection =
            parse("SELECT deviceId, tags.site AS place, tags.none FROM devices").unwrap();
        assert_eq!(projection.shape(), Shape::Projection);
        assert_eq!(
            projection.project(&twin),
            json!({"deviceId": "sensor-7", "place": "lab"})
        );
        for bad in [
            "DELETE FROM devices",
            "SELECT * FROM modules",
            "SELECT * FROM devices.jobs",
            "SELECT * FROM devices WHERE",
            "SELECT * FROM devices WHERE tags.a = 'x",
            "SELECT * FROM devices WHERE a ~ 1",
            "SELECT deviceId, COUNT() FROM devices",
            "SELECT * FROM devices GROUP BY status",
            "SELECT deviceId, COUNT() FROM devices GROUP BY status",
            "SELECT status, COUNT() FROM devices GROUP status",
            "SELECT COUNT() AS a.b FROM devices",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
