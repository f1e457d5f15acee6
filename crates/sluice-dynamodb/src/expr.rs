//! Expressions: condition / filter / key-condition expressions, update expressions and
//! projection expressions — parsed (with `ExpressionAttributeNames` / `Values` substituted)
//! into small trees, then evaluated against items.

use std::collections::{BTreeSet, HashMap};

use crate::error::{DynamoError, Result};
use crate::number::Number;
use crate::value::{Item, Value};

/// One step of a document path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Elem {
    /// A map key (or the top-level attribute name).
    Name(String),
    /// A list index.
    Index(usize),
}

/// A document path: `a`, `#n.b[2]`. The first step is always a name.
pub type Path = Vec<Elem>;

fn show_path(p: &[Elem]) -> String {
    let parts: Vec<String> = p
        .iter()
        .map(|e| match e {
            Elem::Name(n) => n.clone(),
            Elem::Index(i) => format!("[{i}]"),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    /// `=`
    Eq,
    /// `<>`
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

/// An operand of a condition.
#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    /// An attribute of the item.
    Path(Path),
    /// A value from `ExpressionAttributeValues`.
    Value(Value),
    /// `size(path)`.
    Size(Path),
}

/// A condition (also used for filter and key-condition expressions).
#[derive(Clone, Debug, PartialEq)]
pub enum Cond {
    /// `a <op> b`
    Cmp(Operand, CmpOp, Operand),
    /// `a BETWEEN b AND c`
    Between(Operand, Operand, Operand),
    /// `a IN (b, c, …)`
    In(Operand, Vec<Operand>),
    /// `a AND b`
    And(Box<Cond>, Box<Cond>),
    /// `a OR b`
    Or(Box<Cond>, Box<Cond>),
    /// `NOT a`
    Not(Box<Cond>),
    /// `attribute_exists(path)`
    Exists(Path),
    /// `attribute_not_exists(path)`
    NotExists(Path),
    /// `attribute_type(path, :t)`
    Type(Path, Operand),
    /// `begins_with(path, :v)`
    BeginsWith(Operand, Operand),
    /// `contains(path, operand)`
    Contains(Operand, Operand),
}

/// The right-hand side of a SET action.
#[derive(Clone, Debug, PartialEq)]
pub enum SetValue {
    /// A path or a value.
    Operand(Operand),
    /// `if_not_exists(path, value)`
    IfNotExists(Path, Box<SetValue>),
    /// `list_append(a, b)`
    ListAppend(Box<SetValue>, Box<SetValue>),
    /// `a + b`
    Plus(Box<SetValue>, Box<SetValue>),
    /// `a - b`
    Minus(Box<SetValue>, Box<SetValue>),
}

/// A parsed update expression.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Update {
    /// `SET path = value`
    pub set: Vec<(Path, SetValue)>,
    /// `REMOVE path`
    pub remove: Vec<Path>,
    /// `ADD path :v`
    pub add: Vec<(Path, Value)>,
    /// `DELETE path :v`
    pub delete: Vec<(Path, Value)>,
}

impl Update {
    /// Every path the update writes, in clause order.
    pub fn paths(&self) -> Vec<&Path> {
        let mut v: Vec<&Path> = self.set.iter().map(|(p, _)| p).collect();
        v.extend(self.remove.iter());
        v.extend(self.add.iter().map(|(p, _)| p));
        v.extend(self.delete.iter().map(|(p, _)| p));
        v
    }
}

/// Substitutions of one request and which of them expressions used.
pub struct Subst<'a> {
    names: &'a HashMap<String, String>,
    values: &'a HashMap<String, Value>,
    used_names: BTreeSet<String>,
    used_values: BTreeSet<String>,
}

impl<'a> Subst<'a> {
    /// Wraps a request's `ExpressionAttributeNames` and `ExpressionAttributeValues`.
    pub fn new(names: &'a HashMap<String, String>, values: &'a HashMap<String, Value>) -> Subst<'a> {
        Subst { names, values, used_names: BTreeSet::new(), used_values: BTreeSet::new() }
    }

    /// Refuses substitutions no expression used, as DynamoDB does.
    pub fn check_all_used(&self) -> Result<()> {
        let unused: Vec<&String> = self.values.keys().filter(|k| !self.used_values.contains(*k)).collect();
        if !unused.is_empty() {
            let mut u: Vec<&str> = unused.iter().map(|s| s.as_str()).collect();
            u.sort_unstable();
            return Err(DynamoError::validation(format!(
                "Value provided in ExpressionAttributeValues unused in expressions: keys: {{{}}}",
                u.join(", ")
            )));
        }
        let unused: Vec<&String> = self.names.keys().filter(|k| !self.used_names.contains(*k)).collect();
        if !unused.is_empty() {
            let mut u: Vec<&str> = unused.iter().map(|s| s.as_str()).collect();
            u.sort_unstable();
            return Err(DynamoError::validation(format!(
                "Value provided in ExpressionAttributeNames unused in expressions: keys: {{{}}}",
                u.join(", ")
            )));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Name(String),
    Val(String),
    Int(usize),
    LParen,
    RParen,
    LBrack,
    RBrack,
    Comma,
    Dot,
    Cmp(CmpOp),
    Plus,
    Minus,
    Eof,
}

fn lex(src: &str, kind: &str) -> Result<Vec<(Tok, usize, usize)>> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    while i < b.len() {
        let c = b[i];
        let start = i;
        let tok = match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => Tok::LParen,
            b')' => Tok::RParen,
            b'[' => Tok::LBrack,
            b']' => Tok::RBrack,
            b',' => Tok::Comma,
            b'.' => Tok::Dot,
            b'+' => Tok::Plus,
            b'-' => Tok::Minus,
            b'=' => Tok::Cmp(CmpOp::Eq),
            b'<' if b.get(i + 1) == Some(&b'>') => {
                i += 1;
                Tok::Cmp(CmpOp::Ne)
            }
            b'<' if b.get(i + 1) == Some(&b'=') => {
                i += 1;
                Tok::Cmp(CmpOp::Le)
            }
            b'<' => Tok::Cmp(CmpOp::Lt),
            b'>' if b.get(i + 1) == Some(&b'=') => {
                i += 1;
                Tok::Cmp(CmpOp::Ge)
            }
            b'>' => Tok::Cmp(CmpOp::Gt),
            b'#' | b':' => {
                i += 1;
                while i < b.len() && word(b[i]) {
                    i += 1;
                }
                let text = src[start..i].to_owned();
                if text.len() == 1 {
                    return Err(syntax_err(kind, src, start, i, start));
                }
                out.push((if c == b'#' { Tok::Name(text) } else { Tok::Val(text) }, start, i));
                continue;
            }
            b'0'..=b'9' => {
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                let n = src[start..i].parse().map_err(|_| syntax_err(kind, src, start, i, start))?;
                out.push((Tok::Int(n), start, i));
                continue;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while i < b.len() && word(b[i]) {
                    i += 1;
                }
                out.push((Tok::Ident(src[start..i].to_owned()), start, i));
                continue;
            }
            _ => {
                let end = start + src[start..].chars().next().map_or(1, char::len_utf8);
                return Err(DynamoError::validation(format!(
                    "Invalid {kind}: Syntax error; token: \"{}\", near: \"{}\"",
                    &src[start..end],
                    &src[start..end]
                )));
            }
        };
        i += 1;
        out.push((tok, start, i));
    }
    out.push((Tok::Eof, b.len(), b.len()));
    Ok(out)
}

fn syntax_err(kind: &str, src: &str, start: usize, end: usize, near_start: usize) -> DynamoError {
    let token = if start >= src.len() { "<EOF>" } else { &src[start..end] };
    let near_end = (end + 1).min(src.len());
    let near = src.get(near_start..near_end.max(near_start)).unwrap_or("");
    DynamoError::validation(format!("Invalid {kind}: Syntax error; token: \"{token}\", near: \"{}\"", near.trim()))
}

struct Parser<'s, 'a, 'b> {
    src: &'s str,
    kind: &'static str,
    toks: Vec<(Tok, usize, usize)>,
    pos: usize,
    sub: &'b mut Subst<'a>,
    depth: usize,
}

/// Longest expression accepted, bytes (DynamoDB's limit).
pub const MAX_EXPRESSION: usize = 4096;
/// Deepest nesting of parentheses, NOT and functions accepted.
const MAX_DEPTH: usize = 64;

impl Parser<'_, '_, '_> {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos.min(self.toks.len() - 1)].0
    }

    fn peek2(&self) -> &Tok {
        &self.toks[(self.pos + 1).min(self.toks.len() - 1)].0
    }

    fn next(&mut self) -> Tok {
        let t = self.peek().clone();
        if self.pos < self.toks.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn err(&self) -> DynamoError {
        let (_, start, end) = self.toks[self.pos.min(self.toks.len() - 1)];
        let near_start = if self.pos > 0 { self.toks[self.pos - 1].1 } else { start };
        syntax_err(self.kind, self.src, start, end, near_start)
    }

    fn invalid(&self, what: impl std::fmt::Display) -> DynamoError {
        DynamoError::validation(format!("Invalid {}: {what}", self.kind))
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Tok::Ident(s) if s.eq_ignore_ascii_case(kw))
    }

    fn expect(&mut self, t: Tok) -> Result<()> {
        if *self.peek() == t {
            self.next();
            Ok(())
        } else {
            Err(self.err())
        }
    }

    fn name(&mut self) -> Result<String> {
        match self.peek().clone() {
            Tok::Ident(s) => {
                self.next();
                Ok(s)
            }
            Tok::Name(n) => match self.sub.names.get(&n) {
                Some(real) => {
                    self.next();
                    self.sub.used_names.insert(n);
                    Ok(real.clone())
                }
                None => Err(self.invalid(format!(
                    "An expression attribute name used in the document path is not defined; attribute name: {n}"
                ))),
            },
            _ => Err(self.err()),
        }
    }

    fn value(&mut self) -> Result<Value> {
        match self.peek().clone() {
            Tok::Val(v) => match self.sub.values.get(&v) {
                Some(val) => {
                    self.next();
                    self.sub.used_values.insert(v);
                    Ok(val.clone())
                }
                None => Err(self.invalid(format!(
                    "An expression attribute value used in expression is not defined; attribute value: {v}"
                ))),
            },
            _ => Err(self.err()),
        }
    }

    fn path(&mut self) -> Result<Path> {
        let mut p = vec![Elem::Name(self.name()?)];
        loop {
            match self.peek() {
                Tok::Dot => {
                    self.next();
                    p.push(Elem::Name(self.name()?));
                }
                Tok::LBrack => {
                    self.next();
                    let Tok::Int(i) = *self.peek() else {
                        return Err(self.err());
                    };
                    self.next();
                    self.expect(Tok::RBrack)?;
                    p.push(Elem::Index(i));
                }
                _ => return Ok(p),
            }
        }
    }

    fn function_name(&self) -> Option<String> {
        match (self.peek(), self.peek2()) {
            (Tok::Ident(f), Tok::LParen) => Some(f.clone()),
            _ => None,
        }
    }

    fn operand(&mut self) -> Result<Operand> {
        if let Some(f) = self.function_name() {
            if f == "size" {
                self.next();
                self.next();
                let p = self.path()?;
                self.expect(Tok::RParen)?;
                return Ok(Operand::Size(p));
            }
            return Err(self.unknown_function(&f));
        }
        match self.peek() {
            Tok::Val(_) => Ok(Operand::Value(self.value()?)),
            Tok::Ident(_) | Tok::Name(_) => Ok(Operand::Path(self.path()?)),
            _ => Err(self.err()),
        }
    }

    fn unknown_function(&self, f: &str) -> DynamoError {
        const KNOWN: [&str; 8] = [
            "attribute_exists",
            "attribute_not_exists",
            "attribute_type",
            "begins_with",
            "contains",
            "size",
            "if_not_exists",
            "list_append",
        ];
        if KNOWN.contains(&f) {
            self.invalid(format!("The function is not allowed to be used this way in an expression; function: {f}"))
        } else {
            self.invalid(format!("Invalid function name; function: {f}"))
        }
    }

    fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.invalid("The expression is nested too deeply"));
        }
        Ok(())
    }

    fn cond(&mut self) -> Result<Cond> {
        self.enter()?;
        let c = self.cond_inner();
        self.depth -= 1;
        c
    }

    fn cond_inner(&mut self) -> Result<Cond> {
        let mut l = self.and()?;
        while self.is_kw("OR") {
            self.next();
            let r = self.and()?;
            l = Cond::Or(Box::new(l), Box::new(r));
        }
        Ok(l)
    }

    fn and(&mut self) -> Result<Cond> {
        let mut l = self.not()?;
        while self.is_kw("AND") {
            self.next();
            let r = self.not()?;
            l = Cond::And(Box::new(l), Box::new(r));
        }
        Ok(l)
    }

    fn not(&mut self) -> Result<Cond> {
        if self.is_kw("NOT") {
            self.next();
            self.enter()?;
            let inner = self.not();
            self.depth -= 1;
            return Ok(Cond::Not(Box::new(inner?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Cond> {
        if *self.peek() == Tok::LParen {
            self.next();
            let c = self.cond()?;
            self.expect(Tok::RParen)?;
            return Ok(c);
        }
        if let Some(f) = self.function_name() {
            let boolean = ["attribute_exists", "attribute_not_exists", "attribute_type", "begins_with", "contains"];
            if boolean.contains(&f.as_str()) {
                self.next();
                self.next();
                let c = match f.as_str() {
                    "attribute_exists" => Cond::Exists(self.path()?),
                    "attribute_not_exists" => Cond::NotExists(self.path()?),
                    "attribute_type" => {
                        let p = self.path()?;
                        self.expect(Tok::Comma)?;
                        Cond::Type(p, self.operand()?)
                    }
                    "begins_with" => {
                        let a = self.operand()?;
                        self.expect(Tok::Comma)?;
                        Cond::BeginsWith(a, self.operand()?)
                    }
                    _ => {
                        let a = self.operand()?;
                        self.expect(Tok::Comma)?;
                        Cond::Contains(a, self.operand()?)
                    }
                };
                self.expect(Tok::RParen)?;
                return Ok(c);
            }
        }
        let a = self.operand()?;
        match self.peek().clone() {
            Tok::Cmp(op) => {
                self.next();
                Ok(Cond::Cmp(a, op, self.operand()?))
            }
            Tok::Ident(k) if k.eq_ignore_ascii_case("BETWEEN") => {
                self.next();
                let lo = self.operand()?;
                if !self.is_kw("AND") {
                    return Err(self.err());
                }
                self.next();
                Ok(Cond::Between(a, lo, self.operand()?))
            }
            Tok::Ident(k) if k.eq_ignore_ascii_case("IN") => {
                self.next();
                self.expect(Tok::LParen)?;
                let mut list = vec![self.operand()?];
                while *self.peek() == Tok::Comma {
                    self.next();
                    list.push(self.operand()?);
                }
                self.expect(Tok::RParen)?;
                Ok(Cond::In(a, list))
            }
            _ => Err(self.err()),
        }
    }

    fn set_operand(&mut self) -> Result<SetValue> {
        self.enter()?;
        let v = self.set_operand_inner();
        self.depth -= 1;
        v
    }

    fn set_operand_inner(&mut self) -> Result<SetValue> {
        if let Some(f) = self.function_name() {
            match f.as_str() {
                "if_not_exists" => {
                    self.next();
                    self.next();
                    let p = self.path()?;
                    self.expect(Tok::Comma)?;
                    let v = self.set_operand()?;
                    self.expect(Tok::RParen)?;
                    return Ok(SetValue::IfNotExists(p, Box::new(v)));
                }
                "list_append" => {
                    self.next();
                    self.next();
                    let a = self.set_operand()?;
                    self.expect(Tok::Comma)?;
                    let b = self.set_operand()?;
                    self.expect(Tok::RParen)?;
                    return Ok(SetValue::ListAppend(Box::new(a), Box::new(b)));
                }
                _ => return Err(self.unknown_function(&f)),
            }
        }
        match self.peek() {
            Tok::Val(_) => Ok(SetValue::Operand(Operand::Value(self.value()?))),
            Tok::Ident(_) | Tok::Name(_) => Ok(SetValue::Operand(Operand::Path(self.path()?))),
            _ => Err(self.err()),
        }
    }

    fn set_value(&mut self) -> Result<SetValue> {
        let a = self.set_operand()?;
        match self.peek() {
            Tok::Plus => {
                self.next();
                Ok(SetValue::Plus(Box::new(a), Box::new(self.set_operand()?)))
            }
            Tok::Minus => {
                self.next();
                Ok(SetValue::Minus(Box::new(a), Box::new(self.set_operand()?)))
            }
            _ => Ok(a),
        }
    }

    fn update(&mut self) -> Result<Update> {
        let mut u = Update::default();
        let mut seen = BTreeSet::new();
        loop {
            let clause = match self.peek() {
                Tok::Eof if !seen.is_empty() => return Ok(u),
                Tok::Ident(s) => s.to_ascii_uppercase(),
                _ => return Err(self.err()),
            };
            if !["SET", "REMOVE", "ADD", "DELETE"].contains(&clause.as_str()) {
                return Err(self.err());
            }
            if !seen.insert(clause.clone()) {
                return Err(
                    self.invalid(format!("The \"{clause}\" section can only be used once in an update expression;"))
                );
            }
            self.next();
            loop {
                let p = self.path()?;
                match clause.as_str() {
                    "SET" => {
                        self.expect(Tok::Cmp(CmpOp::Eq))?;
                        u.set.push((p, self.set_value()?));
                    }
                    "REMOVE" => u.remove.push(p),
                    "ADD" => u.add.push((p, self.value()?)),
                    _ => u.delete.push((p, self.value()?)),
                }
                if *self.peek() != Tok::Comma {
                    break;
                }
                self.next();
            }
        }
    }
}

fn parser<'s, 'a, 'b>(src: &'s str, kind: &'static str, sub: &'b mut Subst<'a>) -> Result<Parser<'s, 'a, 'b>> {
    if src.trim().is_empty() {
        return Err(DynamoError::validation(format!("Invalid {kind}: The expression can not be empty;")));
    }
    if src.len() > MAX_EXPRESSION {
        return Err(DynamoError::validation(format!(
            "Invalid {kind}: Expression size has exceeded the maximum allowed size; expression size: {}",
            src.len()
        )));
    }
    Ok(Parser { src, kind, toks: lex(src, kind)?, pos: 0, sub, depth: 0 })
}

fn finish<T>(p: &mut Parser<'_, '_, '_>, t: T) -> Result<T> {
    if *p.peek() != Tok::Eof {
        return Err(p.err());
    }
    Ok(t)
}

/// Parses a condition, filter or key-condition expression (`kind` names it in errors, e.g.
/// `ConditionExpression`).
pub fn parse_condition(src: &str, kind: &'static str, sub: &mut Subst<'_>) -> Result<Cond> {
    let mut p = parser(src, kind, sub)?;
    let c = p.cond()?;
    finish(&mut p, c)
}

/// Parses an update expression and checks it (no overlapping paths).
pub fn parse_update(src: &str, sub: &mut Subst<'_>) -> Result<Update> {
    let mut p = parser(src, "UpdateExpression", sub)?;
    let u = p.update()?;
    let u = finish(&mut p, u)?;
    let paths = u.paths();
    for (i, a) in paths.iter().enumerate() {
        for b in &paths[i + 1..] {
            let n = a.len().min(b.len());
            if a[..n] == b[..n] {
                return Err(DynamoError::validation(format!(
                    "Invalid UpdateExpression: Two document paths overlap with each other; must remove or rewrite one of these paths; path one: {}, path two: {}",
                    show_path(a),
                    show_path(b)
                )));
            }
        }
    }
    Ok(u)
}

/// Parses a projection expression (comma-separated paths).
pub fn parse_projection(src: &str, sub: &mut Subst<'_>) -> Result<Vec<Path>> {
    let mut p = parser(src, "ProjectionExpression", sub)?;
    let mut out = vec![p.path()?];
    while *p.peek() == Tok::Comma {
        p.next();
        out.push(p.path()?);
    }
    finish(&mut p, out)
}

/// The value at `path` in `item`, if any.
pub fn get_path<'i>(item: &'i Item, path: &[Elem]) -> Option<&'i Value> {
    let (Elem::Name(first), rest) = path.split_first()? else { return None };
    let mut cur = item.get(first)?;
    for e in rest {
        cur = match (e, cur) {
            (Elem::Name(n), Value::M(m)) => m.get(n)?,
            (Elem::Index(i), Value::L(l)) => l.get(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn operand_value(item: &Item, o: &Operand) -> Option<Value> {
    match o {
        Operand::Value(v) => Some(v.clone()),
        Operand::Path(p) => get_path(item, p).cloned(),
        Operand::Size(p) => {
            let n = match get_path(item, p)? {
                Value::S(s) => s.chars().count(),
                Value::B(b) => b.len(),
                Value::Ss(v) => v.len(),
                Value::Ns(v) => v.len(),
                Value::Bs(v) => v.len(),
                Value::L(v) => v.len(),
                Value::M(m) => m.len(),
                _ => return None,
            };
            Number::parse(&n.to_string()).ok().map(Value::N)
        }
    }
}

/// Evaluates a condition against an item (a missing item is an empty one).
pub fn eval(c: &Cond, item: &Item) -> bool {
    use std::cmp::Ordering::*;
    match c {
        Cond::And(a, b) => eval(a, item) && eval(b, item),
        Cond::Or(a, b) => eval(a, item) || eval(b, item),
        Cond::Not(a) => !eval(a, item),
        Cond::Exists(p) => get_path(item, p).is_some(),
        Cond::NotExists(p) => get_path(item, p).is_none(),
        Cond::Cmp(a, op, b) => {
            let (a, b) = (operand_value(item, a), operand_value(item, b));
            match op {
                CmpOp::Eq => a.is_some() && a == b,
                CmpOp::Ne => a.is_none() || b.is_none() || a != b,
                _ => {
                    let (Some(a), Some(b)) = (a, b) else { return false };
                    match (a.compare(&b), op) {
                        (None, _) => false,
                        (Some(o), CmpOp::Lt) => o == Less,
                        (Some(o), CmpOp::Le) => o != Greater,
                        (Some(o), CmpOp::Gt) => o == Greater,
                        (Some(o), _) => o != Less,
                    }
                }
            }
        }
        Cond::Between(a, lo, hi) => {
            let (Some(a), Some(lo), Some(hi)) =
                (operand_value(item, a), operand_value(item, lo), operand_value(item, hi))
            else {
                return false;
            };
            matches!(a.compare(&lo), Some(Greater | Equal)) && matches!(a.compare(&hi), Some(Less | Equal))
        }
        Cond::In(a, list) => {
            let Some(a) = operand_value(item, a) else { return false };
            list.iter().any(|o| operand_value(item, o).as_ref() == Some(&a))
        }
        Cond::Type(p, t) => match (get_path(item, p), operand_value(item, t)) {
            (Some(v), Some(Value::S(t))) => v.type_name() == t,
            _ => false,
        },
        Cond::BeginsWith(a, b) => match (operand_value(item, a), operand_value(item, b)) {
            (Some(Value::S(a)), Some(Value::S(b))) => a.starts_with(&b),
            (Some(Value::B(a)), Some(Value::B(b))) => a.starts_with(&b),
            _ => false,
        },
        Cond::Contains(a, b) => match (operand_value(item, a), operand_value(item, b)) {
            (Some(Value::S(a)), Some(Value::S(b))) => a.contains(&b),
            (Some(Value::B(a)), Some(Value::B(b))) => b.is_empty() || a.windows(b.len()).any(|w| w == b),
            (Some(Value::Ss(a)), Some(Value::S(b))) => a.contains(&b),
            (Some(Value::Ns(a)), Some(Value::N(b))) => a.contains(&b),
            (Some(Value::Bs(a)), Some(Value::B(b))) => a.contains(&b),
            (Some(Value::L(a)), Some(b)) => a.contains(&b),
            _ => false,
        },
    }
}

fn bad_operand() -> DynamoError {
    DynamoError::validation("An operand in the update expression has an incorrect data type")
}

fn set_value(item: &Item, v: &SetValue) -> Result<Value> {
    match v {
        SetValue::Operand(o) => operand_value(item, o).ok_or_else(|| {
            DynamoError::validation("The provided expression refers to an attribute that does not exist in the item")
        }),
        SetValue::IfNotExists(p, d) => match get_path(item, p) {
            Some(v) => Ok(v.clone()),
            None => set_value(item, d),
        },
        SetValue::ListAppend(a, b) => match (set_value(item, a)?, set_value(item, b)?) {
            (Value::L(mut a), Value::L(b)) => {
                a.extend(b);
                Ok(Value::L(a))
            }
            _ => Err(bad_operand()),
        },
        SetValue::Plus(a, b) | SetValue::Minus(a, b) => match (set_value(item, a)?, set_value(item, b)?) {
            (Value::N(a), Value::N(b)) => {
                let b = if matches!(v, SetValue::Minus(..)) { b.negate() } else { b };
                Ok(Value::N(a.add(&b)?))
            }
            _ => Err(bad_operand()),
        },
    }
}

fn invalid_path() -> DynamoError {
    DynamoError::validation("The document path provided in the update expression is invalid for update")
}

/// Stores `v` at `path`; the parents of a nested path must exist.
pub fn set_path(item: &mut Item, path: &[Elem], v: Value) -> Result<()> {
    let Some((Elem::Name(first), rest)) = path.split_first() else { return Err(invalid_path()) };
    if rest.is_empty() {
        item.insert(first.clone(), v);
        return Ok(());
    }
    let mut cur = item.get_mut(first).ok_or_else(invalid_path)?;
    for (i, e) in rest.iter().enumerate() {
        let last = i + 1 == rest.len();
        cur = match (e, cur) {
            (Elem::Name(n), Value::M(m)) => {
                if last {
                    m.insert(n.clone(), v);
                    return Ok(());
                }
                m.get_mut(n).ok_or_else(invalid_path)?
            }
            (Elem::Index(idx), Value::L(l)) => {
                if last {
                    if *idx < l.len() {
                        l[*idx] = v;
                    } else {
                        l.push(v);
                    }
                    return Ok(());
                }
                l.get_mut(*idx).ok_or_else(invalid_path)?
            }
            _ => return Err(invalid_path()),
        };
    }
    Err(invalid_path())
}

/// Removes the value at `path` (nothing if absent).
pub fn remove_path(item: &mut Item, path: &[Elem]) -> Result<()> {
    let Some((Elem::Name(first), rest)) = path.split_first() else { return Err(invalid_path()) };
    if rest.is_empty() {
        item.remove(first);
        return Ok(());
    }
    let Some(mut cur) = item.get_mut(first) else { return Ok(()) };
    for (i, e) in rest.iter().enumerate() {
        let last = i + 1 == rest.len();
        cur = match (e, cur) {
            (Elem::Name(n), Value::M(m)) => {
                if last {
                    m.remove(n);
                    return Ok(());
                }
                match m.get_mut(n) {
                    Some(x) => x,
                    None => return Ok(()),
                }
            }
            (Elem::Index(idx), Value::L(l)) => {
                if last {
                    if *idx < l.len() {
                        l.remove(*idx);
                    }
                    return Ok(());
                }
                match l.get_mut(*idx) {
                    Some(x) => x,
                    None => return Ok(()),
                }
            }
            _ => return Err(invalid_path()),
        };
    }
    Ok(())
}

fn union<T: Ord + Clone>(a: &[T], b: &[T]) -> Vec<T> {
    let mut v: Vec<T> = a.iter().chain(b).cloned().collect();
    v.sort();
    v.dedup();
    v
}

fn minus<T: PartialEq + Clone>(a: &[T], b: &[T]) -> Vec<T> {
    a.iter().filter(|x| !b.contains(x)).cloned().collect()
}

/// `ADD`: numbers add (a missing one counts as 0), sets take the union; `legacy` also lets
/// lists be appended to (`AttributeUpdates`).
pub fn add_value(old: Option<&Value>, v: &Value, legacy: bool) -> Result<Value> {
    Ok(match (old, v) {
        (None, Value::N(_) | Value::Ss(_) | Value::Ns(_) | Value::Bs(_)) => v.clone(),
        (None, Value::L(_)) if legacy => v.clone(),
        (Some(Value::N(a)), Value::N(b)) => Value::N(a.add(b)?),
        (Some(Value::Ss(a)), Value::Ss(b)) => Value::Ss(union(a, b)),
        (Some(Value::Ns(a)), Value::Ns(b)) => Value::Ns(union(a, b)),
        (Some(Value::Bs(a)), Value::Bs(b)) => Value::Bs(union(a, b)),
        (Some(Value::L(a)), Value::L(b)) if legacy => Value::L(a.iter().chain(b).cloned().collect()),
        (None, other) => {
            return Err(DynamoError::validation(format!(
                "Invalid UpdateExpression: Incorrect operand type for operator or function; operator: ADD, operand type: {}",
                type_word(other)
            )));
        }
        _ => return Err(bad_operand()),
    })
}

/// `DELETE` of set elements: `None` when the set becomes empty (the attribute goes).
pub fn delete_value(old: Option<&Value>, v: &Value) -> Result<Option<Value>> {
    let out = match (old, v) {
        (None, Value::Ss(_) | Value::Ns(_) | Value::Bs(_)) => return Ok(None),
        (Some(Value::Ss(a)), Value::Ss(b)) => Value::Ss(minus(a, b)),
        (Some(Value::Ns(a)), Value::Ns(b)) => Value::Ns(minus(a, b)),
        (Some(Value::Bs(a)), Value::Bs(b)) => Value::Bs(minus(a, b)),
        (None, other) => {
            return Err(DynamoError::validation(format!(
                "Invalid UpdateExpression: Incorrect operand type for operator or function; operator: DELETE, operand type: {}",
                type_word(other)
            )));
        }
        _ => return Err(bad_operand()),
    };
    let empty = matches!(&out, Value::Ss(v) if v.is_empty())
        || matches!(&out, Value::Ns(v) if v.is_empty())
        || matches!(&out, Value::Bs(v) if v.is_empty());
    Ok(if empty { None } else { Some(out) })
}

fn type_word(v: &Value) -> &'static str {
    match v {
        Value::S(_) => "STRING",
        Value::N(_) => "NUMBER",
        Value::B(_) => "BINARY",
        Value::Bool(_) => "BOOLEAN",
        Value::Null => "NULL",
        Value::L(_) => "LIST",
        Value::M(_) => "MAP",
        Value::Ss(_) => "SS",
        Value::Ns(_) => "NS",
        Value::Bs(_) => "BS",
    }
}

/// Applies an update to `item`; every right-hand side reads the item as it was before.
pub fn apply_update(u: &Update, item: &mut Item) -> Result<()> {
    let before = item.clone();
    let sets: Vec<(&Path, Value)> =
        u.set.iter().map(|(p, v)| Ok((p, set_value(&before, v)?))).collect::<Result<_>>()?;
    for (p, v) in sets {
        set_path(item, p, v)?;
    }
    // Remove list elements from the highest index down, so indexes mean what they said.
    let mut removes: Vec<&Path> = u.remove.iter().collect();
    removes.sort_by_key(|p| std::cmp::Reverse(p.cmp_key()));
    for p in removes {
        remove_path(item, p)?;
    }
    for (p, v) in &u.add {
        let nv = add_value(get_path(&before, p), v, false)?;
        set_path(item, p, nv)?;
    }
    for (p, v) in &u.delete {
        match delete_value(get_path(&before, p), v)? {
            Some(nv) => set_path(item, p, nv)?,
            None => remove_path(item, p)?,
        }
    }
    Ok(())
}

trait CmpKey {
    fn cmp_key(&self) -> Vec<(u8, String, usize)>;
}

impl CmpKey for Path {
    fn cmp_key(&self) -> Vec<(u8, String, usize)> {
        self.iter()
            .map(|e| match e {
                Elem::Name(n) => (0, n.clone(), 0),
                Elem::Index(i) => (1, String::new(), *i),
            })
            .collect()
    }
}

/// Copies the projected paths of `item` into a new item.
pub fn project(item: &Item, paths: &[Path]) -> Item {
    let mut out = Item::new();
    for p in paths {
        let Some(v) = get_path(item, p) else { continue };
        let Some((Elem::Name(first), rest)) = p.split_first() else { continue };
        if rest.is_empty() {
            out.insert(first.clone(), v.clone());
            continue;
        }
        let Some(src) = item.get(first) else { continue };
        let slot = out.entry(first.clone()).or_insert_with(|| empty_like(src));
        project_into(slot, src, rest, v);
    }
    out
}

fn empty_like(v: &Value) -> Value {
    match v {
        Value::L(_) => Value::L(Vec::new()),
        _ => Value::M(Item::new()),
    }
}

fn project_into(slot: &mut Value, src: &Value, rest: &[Elem], leaf: &Value) {
    let Some((e, more)) = rest.split_first() else { return };
    match (e, src, slot) {
        (Elem::Name(n), Value::M(sm), Value::M(dm)) => {
            if more.is_empty() {
                dm.insert(n.clone(), leaf.clone());
            } else if let Some(s2) = sm.get(n) {
                let d2 = dm.entry(n.clone()).or_insert_with(|| empty_like(s2));
                project_into(d2, s2, more, leaf);
            }
        }
        (Elem::Index(i), Value::L(sl), Value::L(dl)) => {
            if more.is_empty() {
                dl.push(leaf.clone());
            } else if let Some(s2) = sl.get(*i) {
                let mut d2 = empty_like(s2);
                project_into(&mut d2, s2, more, leaf);
                dl.push(d2);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::item_from_json;
    use serde_json::json;

    fn vals(j: serde_json::Value) -> HashMap<String, Value> {
        item_from_json(&j).unwrap().into_iter().collect()
    }

    fn names(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    fn cond(src: &str, n: &HashMap<String, String>, v: &HashMap<String, Value>) -> Result<Cond> {
        let mut s = Subst::new(n, v);
        let c = parse_condition(src, "ConditionExpression", &mut s)?;
        s.check_all_used()?;
        Ok(c)
    }

    fn lease() -> Item {
        item_from_json(&json!({
            "leaseKey": {"S": "shardId-000000000001"}, "leaseOwner": {"S": "w1"},
            "leaseCounter": {"N": "7"}, "checkpoint": {"S": "TRIM_HORIZON"},
            "parentShardId": {"SS": ["shardId-000000000000"]},
            "m": {"M": {"a": {"L": [{"N": "1"}, {"N": "2"}]}}}
        }))
        .unwrap()
    }

    #[test]
    fn conditions_evaluate() {
        let item = lease();
        let n = names(&[("#c", "leaseCounter"), ("#o", "leaseOwner")]);
        let v = vals(json!({":n": {"N": "7"}, ":big": {"N": "10"}, ":w": {"S": "w1"}, ":x": {"S": "w2"}}));
        let check = |src: &str, want: bool| {
            let c = cond(src, &n, &v).unwrap_or_else(|e| panic!("{src}: {e}"));
            assert_eq!(eval(&c, &item), want, "{src}");
        };
        let n_all = |src: &str, want: bool| {
            // Every :value and #name must be used, so pad with a tautology.
            check(&format!("({src}) AND (#c = :n OR #c <> :n) AND (#o = :w OR #o = :x) AND :big = :big"), want)
        };
        n_all("#c = :n", true);
        n_all("#c <> :n", false);
        n_all("#c < :big", true);
        n_all("#c <= :n", true);
        n_all("#c > :n", false);
        n_all("#c >= :n", true);
        n_all("attribute_exists(leaseKey) AND attribute_not_exists(nope)", true);
        n_all("attribute_not_exists(leaseKey)", false);
        n_all("NOT (#c = :n)", false);
        n_all("#o = :x OR #c = :n", true);
        n_all("#o = :x or NOT attribute_exists(leaseOwner)", false);
        n_all("nope <> :n", true);
        n_all("nope = :n", false);
        n_all("#c BETWEEN :n AND :big", true);
        n_all("#o IN (:x, :w)", true);
        n_all("begins_with(#o, :w)", true);
        n_all("size(#o) = size(#o) AND m.a[1] = m.a[1]", true);
        n_all("contains(parentShardId, :w)", false);
        // Numbers compare numerically, not as strings.
        let v2 = vals(json!({":nine": {"N": "9"}}));
        let c = cond("leaseCounter < :nine", &HashMap::new(), &v2).unwrap();
        assert!(eval(&c, &item));
        let mut ten = item.clone();
        ten.insert("leaseCounter".into(), Value::N(Number::parse("10").unwrap()));
        assert!(!eval(&c, &ten));
    }

    #[test]
    fn condition_errors_name_the_problem() {
        let none = HashMap::new();
        let v = vals(json!({":v": {"S": "x"}}));
        let err = |src: &str, n: &HashMap<String, String>, v: &HashMap<String, Value>| {
            cond(src, n, v).map(|_| ()).unwrap_err().message
        };
        assert!(err("a = ", &none, &v).starts_with("Invalid ConditionExpression: Syntax error; token: \"<EOF>\""));
        assert!(err("a = :v AND", &none, &v).contains("Syntax error"));
        assert!(err("(a = :v", &none, &v).contains("Syntax error"));
        assert!(err("a == :v", &none, &v).contains("Syntax error; token: \"=\""));
        assert!(err("a = :w", &none, &v).contains("attribute value: :w"));
        assert!(err("#a = :v", &none, &v).contains("attribute name: #a"));
        assert!(err("a = a", &none, &v).contains("unused in expressions: keys: {:v}"));
        assert!(err("nosuch(a) AND a = :v", &none, &v).contains("Invalid function name; function: nosuch"));
        assert!(err("a = :v $", &none, &v).contains("Syntax error"));
        assert!(err("", &none, &v).contains("can not be empty"));
        let deep = format!("{}a = :v{}", "(".repeat(2000), ")".repeat(2000));
        assert!(err(&deep, &none, &v).contains("nested too deeply"));
        let nots = format!("{}a = :v", "NOT ".repeat(1000));
        assert!(
            err(&nots, &none, &v).contains("Expression size has exceeded")
                || err(&nots, &none, &v).contains("nested too deeply")
        );
        assert!(err(&"a = :v OR ".repeat(1000), &none, &v).contains("Expression size has exceeded"));
    }

    fn upd(src: &str, n: &HashMap<String, String>, v: &HashMap<String, Value>, item: &mut Item) -> Result<()> {
        let mut s = Subst::new(n, v);
        let u = parse_update(src, &mut s)?;
        s.check_all_used()?;
        apply_update(&u, item)
    }

    #[test]
    fn updates_apply() {
        let mut item = lease();
        let n = names(&[("#c", "leaseCounter")]);
        let v = vals(json!({":one": {"N": "1"}, ":o": {"S": "w2"}, ":s": {"SS": ["x", "y"]}, ":d": {"SS": ["x"]},
                            ":l": {"L": [{"N": "3"}]}}));
        upd(
            "SET #c = #c + :one, leaseOwner = :o, m.a = list_append(m.a, :l), fresh = if_not_exists(fresh, :one) \
             REMOVE checkpoint ADD tags :s DELETE parentShardId :d",
            &n,
            &v,
            &mut item,
        )
        .unwrap();
        assert_eq!(item["leaseCounter"], Value::N(Number::parse("8").unwrap()));
        assert_eq!(item["leaseOwner"], Value::S("w2".into()));
        assert!(!item.contains_key("checkpoint"));
        assert_eq!(item["tags"], Value::Ss(vec!["x".into(), "y".into()]));
        assert_eq!(item["fresh"], Value::N(Number::parse("1").unwrap()));
        assert!(item.contains_key("parentShardId"), "deleting an absent element keeps the set");
        let Value::M(m) = &item["m"] else { panic!() };
        assert_eq!(
            m["a"],
            Value::L(vec![
                Value::N(Number::parse("1").unwrap()),
                Value::N(Number::parse("2").unwrap()),
                Value::N(Number::parse("3").unwrap())
            ])
        );

        let v = vals(json!({":one": {"N": "1"}, ":d": {"SS": ["x", "y"]}, ":s": {"S": "s"}}));
        let mut i2 = item.clone();
        upd(
            "ADD cnt :one DELETE tags :d",
            &HashMap::new(),
            &vals(json!({":one": {"N": "1"}, ":d": {"SS": ["x", "y"]}})),
            &mut i2,
        )
        .unwrap();
        assert_eq!(i2["cnt"], Value::N(Number::parse("1").unwrap()));
        assert!(!i2.contains_key("tags"), "an emptied set is removed");
        let e = upd("SET a = nope + :one", &HashMap::new(), &vals(json!({":one": {"N": "1"}})), &mut i2).unwrap_err();
        assert!(e.message.contains("does not exist in the item"), "{e}");
        let e = upd("SET leaseOwner = leaseOwner + :one", &HashMap::new(), &vals(json!({":one": {"N": "1"}})), &mut i2)
            .unwrap_err();
        assert!(e.message.contains("incorrect data type"), "{e}");
        let e = upd("ADD x :s", &HashMap::new(), &vals(json!({":s": {"S": "s"}})), &mut i2).unwrap_err();
        assert!(e.message.contains("operator: ADD, operand type: STRING"), "{e}");
        let e =
            upd("SET a = :one, a = :one", &HashMap::new(), &vals(json!({":one": {"N": "1"}})), &mut i2).unwrap_err();
        assert!(e.message.contains("Two document paths overlap"), "{e}");
        let e =
            upd("SET a = :one SET b = :one", &HashMap::new(), &vals(json!({":one": {"N": "1"}})), &mut i2).unwrap_err();
        assert!(e.message.contains("can only be used once"), "{e}");
        let e = upd("SET a :one", &HashMap::new(), &vals(json!({":one": {"N": "1"}})), &mut i2).unwrap_err();
        assert!(e.message.contains("Syntax error"), "{e}");
        let _ = v;
    }

    #[test]
    fn projection_keeps_only_paths() {
        let item = lease();
        let mut s_names = names(&[("#k", "leaseKey")]);
        s_names.insert("#m".into(), "m".into());
        let vv = HashMap::new();
        let mut s = Subst::new(&s_names, &vv);
        let p = parse_projection("#k, #m.a[1], nope", &mut s).unwrap();
        let out = project(&item, &p);
        assert_eq!(out.len(), 2);
        let Value::M(m) = &out["m"] else { panic!() };
        assert_eq!(m["a"], Value::L(vec![Value::N(Number::parse("2").unwrap())]));
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(src in "[ a-z#:().,\\[\\]0-9=<>+-]{0,40}") {
            let n = names(&[("#a", "a")]);
            let v = vals(json!({":v": {"N": "1"}}));
            let mut s = Subst::new(&n, &v);
            let _ = parse_condition(&src, "ConditionExpression", &mut s);
            let mut s = Subst::new(&n, &v);
            let _ = parse_update(&src, &mut s);
        }
    }
}
