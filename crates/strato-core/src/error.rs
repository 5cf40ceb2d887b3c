//! Errors for bad input: each names the field and the rule it broke.

use std::fmt;

/// A field of a request broke a rule. `field` is the request path
/// (`max_nodes`, `ssh.admin_password`, `tags["k"]`), `rule` says what is
/// required, in lowercase without a trailing period.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FieldError {
    pub field: String,
    pub rule: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            rule: rule.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.rule)
    }
}

/// Why a create or update of a cluster spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A field's value breaks a rule.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// An update tried to change a property that is fixed at creation.
    #[error("{field}: cannot be changed after the cluster is created{hint}")]
    Immutable { field: String, hint: String },
}

impl SpecError {
    /// The request field the error is about.
    pub fn field(&self) -> &str {
        match self {
            SpecError::Invalid(e) => &e.field,
            SpecError::Immutable { field, .. } => field,
        }
    }
}
