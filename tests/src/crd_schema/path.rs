//! Field paths: where a violation is, in the API server's notation (`spec.rules[0].backendRefs`).

use super::*;

#[derive(Debug, Clone)]
pub(super) enum Segment {
    Field(String),
    Key(String),
    Index(usize),
}

#[derive(Debug, Clone, Default)]
pub(super) struct FieldPath(Vec<Segment>);

impl FieldPath {
    pub(super) fn push(&mut self, segment: Segment) {
        self.0.push(segment);
    }

    pub(super) fn pop(&mut self) {
        self.0.pop();
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Field(name) if i == 0 => write!(f, "{name}")?,
                Segment::Field(name) => write!(f, ".{name}")?,
                Segment::Key(key) => write!(f, "[{key}]")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}
