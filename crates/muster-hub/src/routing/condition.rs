//! IoT Hub's message routing query language: the condition of a route, evaluated against one
//! message.
//!
//! ```text
//! expr    := or ; or := and (OR and)* ; and := not (AND not)* ; not := NOT not | cmp
//! cmp     := sum ((= | != | <> | < | <= | > | >=) sum)?
//! sum     := prod ((+ | -) prod)* ; prod := unary ((* | / | %) unary)* ; unary := - unary | atom
//! atom    := literal | ( expr ) | FUNCTION ( expr, … ) | reference
//! reference := name | [name with any characters] | $systemProperty
//!            | $body.a.b | $twin.tags.x | $twin.properties.desired.x | $twin.properties.reported.x
//! literal := 'text' | "text" | number | true | false | null
//! ```
//!
//! A bare name is an application property (values are text), `$name` a system property
//! (`$contentType`, `$connectionDeviceId`, `$enqueuedTime`, …). `$body` is the JSON body, and
//! only when the message says `content-type` `application/json` and `content-encoding`
//! `utf-8`, as IoT Hub requires. Anything missing is *undefined*: a comparison with it is
//! undefined, `NOT` of it is undefined, and a route sends a message only when its condition is
//! `true`. Comparisons need both sides of one type (`AS_NUMBER` turns text into a number).

use std::cmp::Ordering;

use serde_json::Value;

/// A parsed condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition(Expr);

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Literal(Val),
    App(String),
    System(String),
    Body(Vec<String>),
    Twin(Vec<String>),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Compare(Box<Expr>, Cmp, Box<Expr>),
    Arith(Box<Expr>, char, Box<Expr>),
    Neg(Box<Expr>),
    Call(Func, Vec<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A value while evaluating.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Undefined,
    Json(Value),
}

const UNDEFINED: Val = Val::Undefined;

macro_rules! functions {
    ($($name:ident = $text:literal / $arity:expr),* $(,)?) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Func { $($name),* }

        impl Func {
            fn from_name(name: &str) -> Option<Self> {
                let upper = name.to_ascii_uppercase();
                match upper.as_str() {
                    $($text => Some(Self::$name),)*
                    _ => None,
                }
            }

            /// (least, most) arguments.
            fn arity(self) -> (usize, usize) {
                match self { $(Self::$name => $arity),* }
            }
        }
    };
}

functions! {
    IsDefined = "IS_DEFINED" / (1, 1),
    IsNull = "IS_NULL" / (1, 1),
    IsBool = "IS_BOOL" / (1, 1),
    IsNumber = "IS_NUMBER" / (1, 1),
    IsString = "IS_STRING" / (1, 1),
    IsObject = "IS_OBJECT" / (1, 1),
    IsArray = "IS_ARRAY" / (1, 1),
    IsPrimitive = "IS_PRIMITIVE" / (1, 1),
    AsNumber = "AS_NUMBER" / (1, 1),
    StartsWith = "STARTS_WITH" / (2, 2),
    EndsWith = "ENDS_WITH" / (2, 2),
    Contains = "CONTAINS" / (2, 2),
    IndexOf = "INDEX_OF" / (2, 2),
    Length = "LENGTH" / (1, 1),
    Lower = "LOWER" / (1, 1),
    Upper = "UPPER" / (1, 1),
    Concat = "CONCAT" / (2, 16),
    Substring = "SUBSTRING" / (3, 3),
    Ltrim = "LTRIM" / (1, 1),
    Rtrim = "RTRIM" / (1, 1),
    Abs = "ABS" / (1, 1),
    Ceiling = "CEILING" / (1, 1),
    Floor = "FLOOR" / (1, 1),
    Square = "SQUARE" / (1, 1),
}

/// What a condition reads from a message.
pub trait Message {
    /// An application property.
    fn app(&self, name: &str) -> Option<&str>;
    /// A system property, by its query name without `$` (`contentType`, `connectionDeviceId`,
    /// `enqueuedTime`, …).
    fn system(&self, name: &str) -> Option<&str>;
    /// The JSON body, when the message declares one.
    fn body(&self) -> Option<&Value>;
    /// The sender's twin, when it was loaded.
    fn twin(&self) -> Option<&Value>;
}

/// A condition that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid routing condition: {0}")]
pub struct ConditionError(pub String);

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Str(String),
    Num(f64),
    Word(String),
    Bracket(String),
    Dollar(String),
    Sym(&'static str),
}

/// The characters `a..b` as text (empty when out of range).
fn span(chars: &[char], a: usize, b: usize) -> String {
    chars.get(a..b).unwrap_or_default().iter().collect()
}

fn tokens(text: &str) -> Result<Vec<Tok>, ConditionError> {
    let err = |m: String| ConditionError(m);
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '\'' || c == '"' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(err("a quoted text is not closed".into())),
                    Some(&q) if q == c => {
                        // A doubled quote is a quote inside the text.
                        if chars.get(i + 1) == Some(&c) {
                            s.push(c);
                            i += 2;
                        } else {
                            i += 1;
                            break;
                        }
                    }
                    Some(&other) => {
                        s.push(other);
                        i += 1;
                    }
                }
            }
            out.push(Tok::Str(s));
            continue;
        }
        if c == '[' {
            let end = chars
                .get(i..)
                .unwrap_or_default()
                .iter()
                .position(|&x| x == ']')
                .ok_or_else(|| err("'[' without ']'".into()))?;
            out.push(Tok::Bracket(span(&chars, i + 1, i + end)));
            i += end + 1;
            continue;
        }
        if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            let start = i;
            while chars
                .get(i)
                .is_some_and(|x| x.is_ascii_digit() || matches!(x, '.' | 'e' | 'E'))
            {
                i += 1;
            }
            let text = span(&chars, start, i);
            let n = text
                .parse::<f64>()
                .map_err(|_| err(format!("'{text}' is not a number")))?;
            out.push(Tok::Num(n));
            continue;
        }
        if c == '$' || c.is_alphabetic() || c == '_' {
            let start = i;
            i += 1;
            // `$` names may hold '-' (`$iothub-enqueuedtime`, `$dt-subject`); plain names not
            // (that is a minus).
            while chars
                .get(i)
                .is_some_and(|x| x.is_alphanumeric() || *x == '_' || (c == '$' && *x == '-'))
            {
                i += 1;
            }
            let word = span(&chars, start, i);
            out.push(match word.strip_prefix('$') {
                Some("") => return Err(err("'$' alone is not a name".into())),
                Some(rest) => Tok::Dollar(rest.to_owned()),
                None => Tok::Word(word),
            });
            continue;
        }
        let two = span(&chars, i, chars.len().min(i + 2));
        let sym = match two.as_str() {
            "<=" => Some("<="),
            ">=" => Some(">="),
            "!=" => Some("!="),
            "<>" => Some("!="),
            _ => None,
        };
        if let Some(s) = sym {
            out.push(Tok::Sym(s));
            i += 2;
            continue;
        }
        let sym = match c {
            '=' => "=",
            '<' => "<",
            '>' => ">",
            '(' => "(",
            ')' => ")",
            ',' => ",",
            '.' => ".",
            '+' => "+",
            '-' => "-",
            '*' => "*",
            '/' => "/",
            '%' => "%",
            other => return Err(err(format!("unexpected character '{other}'"))),
        };
        out.push(Tok::Sym(sym));
        i += 1;
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

const MAX_DEPTH: usize = 64;

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn bump(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn keyword(&mut self, k: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(k)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn sym(&mut self, s: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Sym(x)) if *x == s) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, s: &str) -> Result<(), ConditionError> {
        if self.sym(s) {
            Ok(())
        } else {
            Err(ConditionError(format!("expected '{s}'")))
        }
    }

    fn nested<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, ConditionError>,
    ) -> Result<T, ConditionError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ConditionError("the condition nests too deeply".into()));
        }
        let r = f(self);
        self.depth -= 1;
        r
    }

    fn or(&mut self) -> Result<Expr, ConditionError> {
        self.nested(|p| {
            let mut left = p.and()?;
            while p.keyword("OR") {
                left = Expr::Or(Box::new(left), Box::new(p.and()?));
            }
            Ok(left)
        })
    }

    fn and(&mut self) -> Result<Expr, ConditionError> {
        let mut left = self.not()?;
        while self.keyword("AND") {
            left = Expr::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr, ConditionError> {
        if self.keyword("NOT") {
            return self.nested(|p| Ok(Expr::Not(Box::new(p.not()?))));
        }
        self.compare()
    }

    fn compare(&mut self) -> Result<Expr, ConditionError> {
        let left = self.sum()?;
        let op = match self.peek() {
            Some(Tok::Sym("=")) => Cmp::Eq,
            Some(Tok::Sym("!=")) => Cmp::Ne,
            Some(Tok::Sym("<")) => Cmp::Lt,
            Some(Tok::Sym("<=")) => Cmp::Le,
            Some(Tok::Sym(">")) => Cmp::Gt,
            Some(Tok::Sym(">=")) => Cmp::Ge,
            _ => return Ok(left),
        };
        self.pos += 1;
        Ok(Expr::Compare(Box::new(left), op, Box::new(self.sum()?)))
    }

    fn sum(&mut self) -> Result<Expr, ConditionError> {
        let mut left = self.product()?;
        loop {
            let op = if self.sym("+") {
                '+'
            } else if self.sym("-") {
                '-'
            } else {
                return Ok(left);
            };
            left = Expr::Arith(Box::new(left), op, Box::new(self.product()?));
        }
    }

    fn product(&mut self) -> Result<Expr, ConditionError> {
        let mut left = self.unary()?;
        loop {
            let op = if self.sym("*") {
                '*'
            } else if self.sym("/") {
                '/'
            } else if self.sym("%") {
                '%'
            } else {
                return Ok(left);
            };
            left = Expr::Arith(Box::new(left), op, Box::new(self.unary()?));
        }
    }

    fn unary(&mut self) -> Result<Expr, ConditionError> {
        if self.sym("-") {
            return self.nested(|p| Ok(Expr::Neg(Box::new(p.unary()?))));
        }
        self.atom()
    }

    fn path(&mut self) -> Result<Vec<String>, ConditionError> {
        let mut path = Vec::new();
        while self.sym(".") {
            match self.bump() {
                Some(Tok::Word(w) | Tok::Bracket(w)) => path.push(w),
                Some(Tok::Dollar(w)) => path.push(format!("${w}")),
                _ => return Err(ConditionError("expected a name after '.'".into())),
            }
        }
        Ok(path)
    }

    fn atom(&mut self) -> Result<Expr, ConditionError> {
        match self.bump() {
            Some(Tok::Str(s)) => Ok(Expr::Literal(Val::Json(Value::String(s)))),
            Some(Tok::Num(n)) => Ok(Expr::Literal(Val::Json(number(n)))),
            Some(Tok::Sym("(")) => {
                let e = self.or()?;
                self.expect(")")?;
                Ok(e)
            }
            Some(Tok::Bracket(name)) => Ok(Expr::App(name)),
            Some(Tok::Dollar(name)) if name.eq_ignore_ascii_case("body") => {
                Ok(Expr::Body(self.path()?))
            }
            Some(Tok::Dollar(name)) if name.eq_ignore_ascii_case("twin") => {
                let path = self.path()?;
                if path.is_empty() {
                    return Err(ConditionError(
                        "$twin needs a path, e.g. $twin.tags.site".into(),
                    ));
                }
                Ok(Expr::Twin(path))
            }
            Some(Tok::Dollar(name)) => Ok(Expr::System(name)),
            Some(Tok::Word(w)) => {
                if self.sym("(") {
                    let func = Func::from_name(&w)
                        .ok_or_else(|| ConditionError(format!("unknown function {w}")))?;
                    let mut args = Vec::new();
                    if !self.sym(")") {
                        loop {
                            args.push(self.or()?);
                            if self.sym(")") {
                                break;
                            }
                            self.expect(",")?;
                        }
                    }
                    let (least, most) = func.arity();
                    if args.len() < least || args.len() > most {
                        return Err(ConditionError(format!(
                            "{} takes {least} to {most} arguments, not {}",
                            w.to_ascii_uppercase(),
                            args.len()
                        )));
                    }
                    return Ok(Expr::Call(func, args));
                }
                match w.to_ascii_lowercase().as_str() {
                    "true" => Ok(Expr::Literal(Val::Json(Value::Bool(true)))),
                    "false" => Ok(Expr::Literal(Val::Json(Value::Bool(false)))),
                    "null" => Ok(Expr::Literal(Val::Json(Value::Null))),
                    "undefined" => Ok(Expr::Literal(UNDEFINED)),
                    _ => Ok(Expr::App(w)),
                }
            }
            Some(other) => Err(ConditionError(format!("unexpected {other:?}"))),
            None => Err(ConditionError("the condition ends too early".into())),
        }
    }
}

fn number(n: f64) -> Value {
    serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
}

/// Longest condition accepted (IoT Hub: 1,024 characters).
pub const MAX_CONDITION: usize = 1024;

impl Condition {
    /// Parse a condition (`true` when empty).
    ///
    /// # Errors
    /// [`ConditionError`] naming what is wrong.
    pub fn parse(text: &str) -> Result<Self, ConditionError> {
        if text.len() > MAX_CONDITION {
            return Err(ConditionError(format!(
                "a condition has at most {MAX_CONDITION} characters"
            )));
        }
        if text.trim().is_empty() {
            return Ok(Self(Expr::Literal(Val::Json(Value::Bool(true)))));
        }
        let mut p = Parser {
            toks: tokens(text)?,
            pos: 0,
            depth: 0,
        };
        let e = p.or()?;
        if let Some(t) = p.peek() {
            return Err(ConditionError(format!(
                "unexpected {t:?} after the condition"
            )));
        }
        Ok(Self(e))
    }

    /// The condition reads the twin (it must be loaded before evaluating).
    #[must_use]
    pub fn uses_twin(&self) -> bool {
        fn walk(e: &Expr) -> bool {
            match e {
                Expr::Twin(_) => true,
                Expr::Not(a) | Expr::Neg(a) => walk(a),
                Expr::And(a, b) | Expr::Or(a, b) => walk(a) || walk(b),
                Expr::Compare(a, _, b) | Expr::Arith(a, _, b) => walk(a) || walk(b),
                Expr::Call(_, args) => args.iter().any(walk),
                _ => false,
            }
        }
        walk(&self.0)
    }

    /// Whether `message` matches (only a `true` result does).
    pub fn matches(&self, message: &dyn Message) -> bool {
        matches!(eval(&self.0, message), Val::Json(Value::Bool(true)))
    }
}

fn lookup(root: Option<&Value>, path: &[String]) -> Val {
    let Some(mut v) = root else {
        return UNDEFINED;
    };
    for seg in path {
        v = match v.get(seg.as_str()) {
            Some(x) => x,
            None => return UNDEFINED,
        };
    }
    Val::Json(v.clone())
}

fn text(v: Option<&str>) -> Val {
    v.map_or(UNDEFINED, |s| Val::Json(Value::String(s.to_owned())))
}

fn num(v: &Val) -> Option<f64> {
    match v {
        Val::Json(Value::Number(n)) => n.as_f64(),
        _ => None,
    }
}

fn string(v: &Val) -> Option<&str> {
    match v {
        Val::Json(Value::String(s)) => Some(s),
        _ => None,
    }
}

fn boolean(v: &Val) -> Option<bool> {
    match v {
        Val::Json(Value::Bool(b)) => Some(*b),
        _ => None,
    }
}

fn of_bool(b: bool) -> Val {
    Val::Json(Value::Bool(b))
}

fn of_num(n: f64) -> Val {
    if n.is_finite() {
        Val::Json(number(n))
    } else {
        UNDEFINED
    }
}

fn compare(a: &Val, b: &Val) -> Option<Ordering> {
    match (a, b) {
        (Val::Json(Value::Number(x)), Val::Json(Value::Number(y))) => {
            x.as_f64()?.partial_cmp(&y.as_f64()?)
        }
        (Val::Json(Value::String(x)), Val::Json(Value::String(y))) => Some(x.cmp(y)),
        (Val::Json(Value::Bool(x)), Val::Json(Value::Bool(y))) => Some(x.cmp(y)),
        (Val::Json(Value::Null), Val::Json(Value::Null)) => Some(Ordering::Equal),
        (Val::Json(x @ (Value::Object(_) | Value::Array(_))), Val::Json(y)) if x == y => {
            Some(Ordering::Equal)
        }
        _ => None,
    }
}

fn eval(e: &Expr, m: &dyn Message) -> Val {
    match e {
        Expr::Literal(v) => v.clone(),
        Expr::App(name) => text(m.app(name)),
        Expr::System(name) => text(m.system(name)),
        Expr::Body(path) => lookup(m.body(), path),
        Expr::Twin(path) => lookup(m.twin(), path),
        Expr::Not(a) => boolean(&eval(a, m)).map_or(UNDEFINED, |b| of_bool(!b)),
        Expr::And(a, b) => {
            let x = boolean(&eval(a, m));
            if x == Some(false) {
                return of_bool(false);
            }
            match (x, boolean(&eval(b, m))) {
                (_, Some(false)) => of_bool(false),
                (Some(true), Some(true)) => of_bool(true),
                _ => UNDEFINED,
            }
        }
        Expr::Or(a, b) => {
            let x = boolean(&eval(a, m));
            if x == Some(true) {
                return of_bool(true);
            }
            match (x, boolean(&eval(b, m))) {
                (_, Some(true)) => of_bool(true),
                (Some(false), Some(false)) => of_bool(false),
                _ => UNDEFINED,
            }
        }
        Expr::Compare(a, op, b) => {
            let Some(o) = compare(&eval(a, m), &eval(b, m)) else {
                // Unlike types: only "not equal" holds… but IoT Hub leaves it undefined.
                return UNDEFINED;
            };
            of_bool(match op {
                Cmp::Eq => o == Ordering::Equal,
                Cmp::Ne => o != Ordering::Equal,
                Cmp::Lt => o == Ordering::Less,
                Cmp::Le => o != Ordering::Greater,
                Cmp::Gt => o == Ordering::Greater,
                Cmp::Ge => o != Ordering::Less,
            })
        }
        Expr::Arith(a, op, b) => match (num(&eval(a, m)), num(&eval(b, m))) {
            (Some(x), Some(y)) => of_num(match op {
                '+' => x + y,
                '-' => x - y,
                '*' => x * y,
                '/' => x / y,
                _ => x % y,
            }),
            _ => UNDEFINED,
        },
        Expr::Neg(a) => num(&eval(a, m)).map_or(UNDEFINED, |x| of_num(-x)),
        Expr::Call(f, args) => call(*f, &args.iter().map(|a| eval(a, m)).collect::<Vec<_>>()),
    }
}

fn call(f: Func, args: &[Val]) -> Val {
    let a = args.first().unwrap_or(&UNDEFINED);
    let b = args.get(1).unwrap_or(&UNDEFINED);
    let is = |p: fn(&Value) -> bool| match a {
        Val::Json(v) => of_bool(p(v)),
        Val::Undefined => of_bool(false),
    };
    let strings = || Some((string(a)?, string(b)?));
    match f {
        Func::IsDefined => of_bool(!matches!(a, Val::Undefined)),
        Func::IsNull => is(Value::is_null),
        Func::IsBool => is(Value::is_boolean),
        Func::IsNumber => is(Value::is_number),
        Func::IsString => is(Value::is_string),
        Func::IsObject => is(Value::is_object),
        Func::IsArray => is(Value::is_array),
        Func::IsPrimitive => is(|v| !v.is_object() && !v.is_array()),
        Func::AsNumber => match a {
            Val::Json(Value::Number(_)) => a.clone(),
            Val::Json(Value::String(s)) => s.trim().parse::<f64>().map_or(UNDEFINED, of_num),
            _ => UNDEFINED,
        },
        Func::StartsWith => strings().map_or(UNDEFINED, |(s, p)| of_bool(s.starts_with(p))),
        Func::EndsWith => strings().map_or(UNDEFINED, |(s, p)| of_bool(s.ends_with(p))),
        Func::Contains => strings().map_or(UNDEFINED, |(s, p)| of_bool(s.contains(p))),
        Func::IndexOf => strings().map_or(UNDEFINED, |(s, p)| {
            #[allow(clippy::cast_precision_loss, reason = "text lengths are small")]
            of_num(s.find(p).map_or(-1.0, |i| s[..i].chars().count() as f64))
        }),
        Func::Length => string(a).map_or(UNDEFINED, |s| {
            #[allow(clippy::cast_precision_loss, reason = "text lengths are small")]
            of_num(s.chars().count() as f64)
        }),
        Func::Lower => string(a).map_or(UNDEFINED, |s| Val::Json(Value::String(s.to_lowercase()))),
        Func::Upper => string(a).map_or(UNDEFINED, |s| Val::Json(Value::String(s.to_uppercase()))),
        Func::Ltrim => string(a).map_or(UNDEFINED, |s| {
            Val::Json(Value::String(s.trim_start().to_owned()))
        }),
        Func::Rtrim => string(a).map_or(UNDEFINED, |s| {
            Val::Json(Value::String(s.trim_end().to_owned()))
        }),
        Func::Concat => {
            let mut out = String::new();
            for v in args {
                match string(v) {
                    Some(s) => out.push_str(s),
                    None => return UNDEFINED,
                }
            }
            Val::Json(Value::String(out))
        }
        Func::Substring => {
            let (Some(s), Some(start), Some(len)) = (string(a), num(b), args.get(2).and_then(num))
            else {
                return UNDEFINED;
            };
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "clamped to the text's length"
            )]
            let (start, len) = (start.max(0.0) as usize, len.max(0.0) as usize);
            Val::Json(Value::String(s.chars().skip(start).take(len).collect()))
        }
        Func::Abs => num(a).map_or(UNDEFINED, |x| of_num(x.abs())),
        Func::Ceiling => num(a).map_or(UNDEFINED, |x| of_num(x.ceil())),
        Func::Floor => num(a).map_or(UNDEFINED, |x| of_num(x.floor())),
        Func::Square => num(a).map_or(UNDEFINED, |x| of_num(x * x)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;
    use serde_json::json;

    struct M {
        app: Vec<(&'static str, &'static str)>,
        system: Vec<(&'static str, &'static str)>,
        body: Option<Value>,
        twin: Option<Value>,
    }

    impl Message for M {
        fn app(&self, name: &str) -> Option<&str> {
            self.app.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
        }
        fn system(&self, name: &str) -> Option<&str> {
            self.system
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| *v)
        }
        fn body(&self) -> Option<&Value> {
            self.body.as_ref()
        }
        fn twin(&self) -> Option<&Value> {
            self.twin.as_ref()
        }
    }

    fn lab() -> M {
        M {
            app: vec![
                ("temperatureAlert", "true"),
                ("level", "7"),
                ("odd-name", "x"),
            ],
            system: vec![
                ("contentType", "application/json"),
                ("connectionDeviceId", "dev-1"),
            ],
            body: Some(json!({"temperature": 31.5, "humidity": 60, "meta": {"site": "lab"}})),
            twin: Some(
                json!({"tags": {"site": "lab"}, "properties": {"desired": {"telemetryDelay": "2"}}}),
            ),
        }
    }

    fn check(text: &str) -> bool {
        Condition::parse(text).unwrap().matches(&lab())
    }

    #[test]
    fn the_documented_examples() {
        assert!(check("temperatureAlert = 'true'"));
        assert!(check("$body.temperature > 30"));
        assert!(!check("$body.temperature > 40"));
        assert!(check(
            "temperatureAlert = \"true\" AND $body.humidity >= 60"
        ));
        assert!(check("$connectionDeviceId = 'dev-1'"));
        assert!(check(
            "$twin.tags.site = 'lab' AND $twin.properties.desired.telemetryDelay = '2'"
        ));
        assert!(check(
            "IS_DEFINED($body.meta.site) AND NOT IS_DEFINED($body.missing)"
        ));
        assert!(check(
            "STARTS_WITH($connectionDeviceId, 'dev') AND ENDS_WITH($body.meta.site, 'ab')"
        ));
        assert!(check("AS_NUMBER(level) > 5 AND AS_NUMBER(level) * 2 = 14"));
        assert!(check("[odd-name] = 'x'"));
        assert!(check("LOWER(CONCAT($body.meta.site, 'X')) = 'labx'"));
        assert!(check("true"));
        assert!(check(""));
        assert!(check("(1 + 2) * 3 = 9 AND -$body.humidity < 0"));
    }

    #[test]
    fn undefined_is_neither_true_nor_false() {
        // A string property compared with a number is undefined: neither route nor its NOT.
        assert!(!check("level > 5"));
        assert!(!check("NOT (level > 5)"));
        assert!(!check("missing = 'x'"));
        assert!(!check("NOT (missing = 'x')"));
        assert!(check("missing = 'x' OR temperatureAlert = 'true'"));
        assert!(!check("missing = 'x' AND true"));
        assert!(!check("AS_NUMBER('abc') > 1"));
    }

    #[test]
    fn bad_conditions_are_refused_with_a_reason() {
        for bad in [
            "temperatureAlert =",
            "FOO(1)",
            "STARTS_WITH('a')",
            "'unclosed",
            "a = 1)",
            "$",
            "$twin",
            "a # b",
        ] {
            assert!(Condition::parse(bad).is_err(), "{bad}");
        }
        let deep = format!("{}true{}", "(".repeat(200), ")".repeat(200));
        assert!(Condition::parse(&deep).is_err());
        assert!(Condition::parse(&"a".repeat(2000)).is_err());
    }

    #[test]
    fn twin_use_is_known_before_evaluating() {
        assert!(Condition::parse("$twin.tags.a = 'b'").unwrap().uses_twin());
        assert!(!Condition::parse("a = 'b'").unwrap().uses_twin());
    }
}
