//! `strato token`, `strato role assignment` and `strato whoami`: API tokens
//! (never their secrets, but in the one answer of `token create`), role
//! assignments, and who the caller is.

use serde::Serialize;
use strato_proto::v1;

use super::{Render, Table, ts};

/// One API token, without its secret.
#[derive(Debug, Serialize)]
pub struct TokenView {
    pub name: String,
    /// The principal calls with this token act as: `token:NAME`.
    pub principal: String,
    pub role: String,
    pub scope: String,
    pub created_at: String,
    /// `None`: never expires.
    pub expires_at: Option<String>,
    pub created_by: String,
    pub revoked: bool,
}

impl From<v1::ApiToken> for TokenView {
    fn from(t: v1::ApiToken) -> Self {
        TokenView {
            principal: format!("token:{}", t.name),
            name: t.name,
            role: t.role,
            scope: t.scope,
            created_at: ts(t.created_at.as_ref()),
            expires_at: t.expires_at.as_ref().map(|e| ts(Some(e))),
            created_by: t.created_by,
            revoked: t.revoked,
        }
    }
}

impl TokenView {
    fn expires(&self) -> String {
        self.expires_at.clone().unwrap_or_else(|| "never".into())
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

impl Render for TokenView {
    fn table(&self) -> Table {
        Table::properties(vec![
            ("name", self.name.clone()),
            ("principal", self.principal.clone()),
            ("role", self.role.clone()),
            ("scope", self.scope.clone()),
            ("created_at", self.created_at.clone()),
            ("expires_at", self.expires()),
            ("created_by", self.created_by.clone()),
            ("revoked", yes_no(self.revoked)),
        ])
    }
}

impl Render for Vec<TokenView> {
    fn table(&self) -> Table {
        let mut t = Table::new(&[
            "NAME",
            "ROLE",
            "SCOPE",
            "CREATED",
            "EXPIRES",
            "CREATED-BY",
            "REVOKED",
        ]);
        for token in self {
            t.row(vec![
                token.name.clone(),
                token.role.clone(),
                token.scope.clone(),
                token.created_at.clone(),
                token.expires(),
                token.created_by.clone(),
                yes_no(token.revoked),
            ]);
        }
        t
    }
}

/// `token create`: the new token and, this once, its secret.
#[derive(Debug, Serialize)]
pub struct NewTokenView {
    pub token: TokenView,
    pub secret: String,
}

impl Render for NewTokenView {
    fn table(&self) -> Table {
        let mut t = self.token.table();
        t.section(Table::lines(vec![
            format!("token: {}", self.secret),
            "This secret is shown only this once; store it now (e.g. `strato login --token -`)."
                .into(),
        ]));
        t
    }
}

/// A role given to a principal at a scope.
#[derive(Debug, Serialize)]
pub struct RoleAssignmentView {
    pub principal: String,
    pub role: String,
    pub scope: String,
    pub created_at: String,
}

impl From<v1::RoleAssignment> for RoleAssignmentView {
    fn from(a: v1::RoleAssignment) -> Self {
        RoleAssignmentView {
            principal: a.principal,
            role: a.role,
            scope: a.scope,
            created_at: ts(a.created_at.as_ref()),
        }
    }
}

impl Render for Vec<RoleAssignmentView> {
    fn table(&self) -> Table {
        let mut t = Table::new(&["PRINCIPAL", "ROLE", "SCOPE", "CREATED"]);
        for a in self {
            t.row(vec![
                a.principal.clone(),
                a.role.clone(),
                a.scope.clone(),
                a.created_at.clone(),
            ]);
        }
        t
    }
}

/// `whoami`: the caller's principal and every role it holds.
#[derive(Debug, Serialize)]
pub struct WhoAmIView {
    pub principal: String,
    pub roles: Vec<RoleAssignmentView>,
}

impl From<v1::WhoAmIResponse> for WhoAmIView {
    fn from(w: v1::WhoAmIResponse) -> Self {
        WhoAmIView {
            principal: w.principal,
            roles: w.roles.into_iter().map(RoleAssignmentView::from).collect(),
        }
    }
}

impl Render for WhoAmIView {
    fn table(&self) -> Table {
        let mut t = Table::properties(vec![("principal", self.principal.clone())]);
        if self.roles.is_empty() {
            t.section(Table::lines(vec!["no roles".into()]));
        } else {
            let mut roles = Table::new(&["ROLE", "SCOPE"]);
            for r in &self.roles {
                roles.row(vec![r.role.clone(), r.scope.clone()]);
            }
            t.section(roles);
        }
        t
    }
}

/// `strato login`: where the config went and, when checked, who the
/// control plane takes the token for.
#[derive(Debug, Serialize)]
pub struct LoginView {
    pub endpoint: String,
    /// The config file written.
    pub config: String,
    /// Whether the control plane was asked (not with `--no-verify`).
    pub verified: bool,
    pub principal: Option<String>,
    pub roles: Vec<RoleAssignmentView>,
}

impl Render for LoginView {
    fn table(&self) -> Table {
        let first = match &self.principal {
            Some(principal) => format!(
                "logged in to {} as {principal} (roles: {})",
                self.endpoint,
                summary(&self.roles)
            ),
            None => format!("saved {} without checking it (--no-verify)", self.endpoint),
        };
        Table::lines(vec![first, format!("config written to {}", self.config)])
    }
}

/// `Owner at /, Reader at /clusters/gpu`, or `none`.
fn summary(roles: &[RoleAssignmentView]) -> String {
    if roles.is_empty() {
        return "none".into();
    }
    roles
        .iter()
        .map(|r| format!("{} at {}", r.role, r.scope))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::super::rendered;
    use super::*;

    fn at(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos: 0 })
    }

    fn token(name: &str, expires: Option<i64>, revoked: bool) -> v1::ApiToken {
        v1::ApiToken {
            name: name.into(),
            role: "DataScientist".into(),
            scope: "/clusters/gpu".into(),
            created_at: at(0),
            expires_at: expires.and_then(at),
            created_by: "token:admin".into(),
            revoked,
        }
    }

    #[test]
    fn a_new_token_shows_its_secret_once_after_the_record() {
        let view = NewTokenView {
            token: TokenView::from(token("ci", Some(86_400), false)),
            secret: "strato_s3cret".into(),
        };
        let text = rendered(&view.table());
        assert!(
            text.starts_with("name        ci\nprincipal   token:ci\n"),
            "{text}"
        );
        assert!(
            text.contains("expires_at  1970-01-02T00:00:00Z\n"),
            "{text}"
        );
        assert!(
            text.contains("\n\ntoken: strato_s3cret\nThis secret is shown only this once"),
            "{text}"
        );
        let json = serde_json::to_value(&view).expect("json");
        assert_eq!(json["secret"], "strato_s3cret");
        assert_eq!(json["token"]["name"], "ci");
        assert_eq!(json["token"]["principal"], "token:ci");
    }

    #[test]
    fn the_token_list_says_never_and_revoked() {
        let list = vec![
            TokenView::from(token("ci", None, true)),
            TokenView::from(token("nightly", Some(60), false)),
        ];
        let text = rendered(&list.table());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "NAME",
                "ROLE",
                "SCOPE",
                "CREATED",
                "EXPIRES",
                "CREATED-BY",
                "REVOKED"
            ]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "ci",
                "DataScientist",
                "/clusters/gpu",
                "1970-01-01T00:00:00Z",
                "never",
                "token:admin",
                "yes"
            ]
        );
        assert!(
            lines[2].contains("1970-01-01T00:01:00Z") && lines[2].ends_with("no"),
            "{text}"
        );
        let json = serde_json::to_value(&list).expect("json");
        assert_eq!(json[0]["expires_at"], serde_json::Value::Null);
        assert_eq!(json[0]["revoked"], true);
    }

    #[test]
    fn whoami_lists_the_roles() {
        let view = WhoAmIView::from(v1::WhoAmIResponse {
            principal: "token:admin".into(),
            roles: vec![
                v1::RoleAssignment {
                    principal: "token:admin".into(),
                    role: "Owner".into(),
                    scope: "/".into(),
                    created_at: at(0),
                },
                v1::RoleAssignment {
                    principal: "token:admin".into(),
                    role: "Reader".into(),
                    scope: "/clusters/gpu".into(),
                    created_at: at(0),
                },
            ],
        });
        assert_eq!(summary(&view.roles), "Owner at /, Reader at /clusters/gpu");
        assert_eq!(
            rendered(&view.table()),
            "principal  token:admin\n\nROLE    SCOPE\nOwner   /\nReader  /clusters/gpu\n"
        );
        let nobody = WhoAmIView {
            principal: "oidc:x".into(),
            roles: Vec::new(),
        };
        assert_eq!(summary(&nobody.roles), "none");
        let assignments = vec![RoleAssignmentView::from(v1::RoleAssignment {
            principal: "oidc:x".into(),
            role: "Reader".into(),
            scope: "/".into(),
            created_at: at(0),
        })];
        assert_eq!(
            rendered(&assignments.table()),
            "PRINCIPAL  ROLE    SCOPE  CREATED\noidc:x     Reader  /      1970-01-01T00:00:00Z\n"
        );
    }
}
