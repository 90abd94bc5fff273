//! The model's own constraints (required members, enum values, string lengths), checked
//! generically over every request shape before a handler sees it.
//!
//! `shapes.rs` implements [`Check`] for every generated shape; a [`Checker`] walks the value,
//! keeps the path of the member it is in, and collects one message per violation in the
//! wording AWS uses for model validation.

use std::collections::BTreeMap;

/// A value whose members can be checked against the ECS model's constraints.
pub trait Check {
    fn check(&self, c: &mut Checker);
}

impl<T: Check> Check for Vec<T> {
    fn check(&self, c: &mut Checker) {
        for (i, v) in self.iter().enumerate() {
            c.path.push(Segment::Index(i));
            v.check(c);
            c.path.pop();
        }
    }
}

impl<T: Check> Check for BTreeMap<String, T> {
    fn check(&self, c: &mut Checker) {
        for (k, v) in self {
            c.path.push(Segment::Key(k.clone()));
            v.check(c);
            c.path.pop();
        }
    }
}

#[derive(Debug, Clone)]
enum Segment {
    Field(&'static str),
    Index(usize),
    Key(String),
}

/// Walks a value and collects constraint violations with the path of each.
#[derive(Debug, Default)]
pub struct Checker {
    path: Vec<Segment>,
    errors: Vec<String>,
}

impl Checker {
    /// Checks `value` and returns every violation, in the order met.
    pub fn run<T: Check + ?Sized>(value: &T) -> Vec<String> {
        let mut c = Checker::default();
        value.check(&mut c);
        c.errors
    }

    /// The path of `field` inside the current position, e.g. `containerDefinitions[0].name`.
    pub fn path_of(&self, field: &str) -> String {
        let mut s = String::new();
        for seg in &self.path {
            match seg {
                Segment::Field(f) => {
                    if !s.is_empty() {
                        s.push('.');
                    }
                    s.push_str(f);
                }
                Segment::Index(i) => s.push_str(&format!("[{i}]")),
                Segment::Key(k) => s.push_str(&format!("[\"{k}\"]")),
            }
        }
        if !field.is_empty() {
            if !s.is_empty() {
                s.push('.');
            }
            s.push_str(field);
        }
        s
    }

    pub fn required(&mut self, field: &'static str, present: bool) {
        if !present {
            let path = self.path_of(field);
            self.errors.push(format!(
                "Value null at '{path}' failed to satisfy constraint: Member must not be null"
            ));
        }
    }

    pub fn enum_value(&mut self, field: &'static str, value: Option<&str>, allowed: &[&str]) {
        if let Some(v) = value
            && !allowed.contains(&v)
        {
            let path = self.path_of(field);
            self.errors.push(format!(
                "Value '{v}' at '{path}' failed to satisfy constraint: Member must satisfy enum value set: [{}]",
                allowed.join(", ")
            ));
        }
    }

    pub fn enum_list(&mut self, field: &'static str, values: Option<&[String]>, allowed: &[&str]) {
        for (i, v) in values.unwrap_or_default().iter().enumerate() {
            if !allowed.contains(&v.as_str()) {
                let path = self.path_of(field);
                self.errors.push(format!(
                    "Value '{v}' at '{path}[{i}]' failed to satisfy constraint: Member must satisfy enum value set: [{}]",
                    allowed.join(", ")
                ));
            }
        }
    }

    pub fn length(&mut self, field: &'static str, value: Option<&str>, min: usize, max: usize) {
        if let Some(v) = value {
            let n = v.chars().count();
            if n < min || n > max {
                let path = self.path_of(field);
                let rule = if n < min {
                    format!("Member must have length greater than or equal to {min}")
                } else {
                    format!("Member must have length less than or equal to {max}")
                };
                self.errors.push(format!("Value '{v}' at '{path}' failed to satisfy constraint: {rule}"));
            }
        }
    }

    pub fn nested<T: Check + ?Sized>(&mut self, field: &'static str, value: Option<&T>) {
        if let Some(v) = value {
            self.path.push(Segment::Field(field));
            v.check(self);
            self.path.pop();
        }
    }
}
