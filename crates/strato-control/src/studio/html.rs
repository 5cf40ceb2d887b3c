//! The studio's HTML: escaping, the page around each view, and the pieces
//! views share (tables, forms, fields with their errors). Everything a
//! caller or the store gave goes through [`esc`]; nothing else builds
//! markup from data.

use std::fmt::Write as _;

/// `s` safe in HTML text and in double-quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A path segment (a cluster or job name) safe in a URL.
pub fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Where a page sits in the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Compute,
    Jobs,
    Quota,
    None,
}

/// The page: its title, the navigation (with the signed-in principal and a
/// sign-out form when there is one) and `body`.
pub fn page(title: &str, section: Section, who: Option<(&str, &str)>, body: &str) -> String {
    let mut nav = String::new();
    if let Some((principal, csrf)) = who {
        let link = |href: &str, label: &str, s: Section| {
            let current = if s == section {
                " aria-current=\"page\""
            } else {
                ""
            };
            format!("<a href=\"{href}\"{current}>{label}</a>")
        };
        let _ = write!(
            nav,
            "<nav aria-label=\"Studio\">{}{}{}<span class=\"who\">{}</span>\
             <form method=\"post\" action=\"/studio/logout\">{}<button type=\"submit\">Sign out</button></form></nav>",
            link("/studio/compute", "Compute", Section::Compute),
            link("/studio/jobs", "Jobs", Section::Jobs),
            link("/studio/quota", "Quota", Section::Quota),
            esc(principal),
            csrf_field(csrf),
        );
    }
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Strato studio</title><link rel=\"stylesheet\" href=\"/studio/static/studio.css\">\
         <script src=\"/studio/static/studio.js\" defer></script></head>\
         <body><header><a class=\"brand\" href=\"/studio\">Strato studio</a>{nav}</header>\
         <main><h1>{}</h1>{body}</main></body></html>",
        esc(title),
        esc(title)
    )
}

pub fn csrf_field(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(csrf)
    )
}

/// A table with a caption (its accessible name), headers and rows of
/// already-escaped cells.
pub fn table(caption: &str, headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!(
        "<div class=\"scroll\"><table><caption>{}</caption><thead><tr>",
        esc(caption)
    );
    for h in headers {
        let _ = write!(out, "<th scope=\"col\">{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    if rows.is_empty() {
        let _ = write!(
            out,
            "<tr><td colspan=\"{}\">None.</td></tr>",
            headers.len().max(1)
        );
    }
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
    out
}

/// Label/value pairs (values already escaped).
pub fn facts(pairs: &[(&str, String)]) -> String {
    let mut out = String::from("<dl class=\"facts\">");
    for (k, v) in pairs {
        let _ = write!(out, "<dt>{}</dt><dd>{v}</dd>", esc(k));
    }
    out.push_str("</dl>");
    out
}

/// A message for everyone to see (`role="alert"` for errors).
pub fn notice(kind: &str, text: &str) -> String {
    let role = if kind == "error" {
        " role=\"alert\""
    } else {
        ""
    };
    format!("<p class=\"notice {kind}\"{role}>{}</p>", esc(text))
}

/// A form field: label, control, hint and, when the API refused it, the
/// rule it broke, tied to the control for screen readers.
pub struct Field<'a> {
    pub name: &'a str,
    pub label: &'a str,
    pub control: String,
    pub hint: &'a str,
    pub error: Option<&'a str>,
}

impl Field<'_> {
    pub fn render(&self) -> String {
        let id = format!("f-{}", self.name);
        let mut described = Vec::new();
        let mut after = String::new();
        if !self.hint.is_empty() {
            described.push(format!("{id}-hint"));
            let _ = write!(after, "<small id=\"{id}-hint\">{}</small>", esc(self.hint));
        }
        if let Some(e) = self.error {
            described.push(format!("{id}-error"));
            let _ = write!(
                after,
                "<span class=\"field-error\" id=\"{id}-error\" role=\"alert\">{}</span>",
                esc(e)
            );
        }
        // The first `@ATTRS@` is the control's own (a value comes after it).
        let control = self.control.replacen(
            ATTRS,
            &format!(
                "id=\"{id}\" name=\"{}\"{}{}",
                self.name,
                if described.is_empty() {
                    String::new()
                } else {
                    format!(" aria-describedby=\"{}\"", described.join(" "))
                },
                if self.error.is_some() {
                    " aria-invalid=\"true\""
                } else {
                    ""
                }
            ),
            1,
        );
        format!(
            "<div class=\"field{}\"><label for=\"{id}\">{}</label>{control}{after}</div>",
            if self.error.is_some() { " invalid" } else { "" },
            esc(self.label)
        )
    }
}

/// Where [`Field::render`] puts a control's id, name and ARIA attributes.
const ATTRS: &str = "@ATTRS@";

/// An `<input>` for [`Field`].
pub fn input(kind: &str, value: &str, extra: &str) -> String {
    format!(
        "<input {ATTRS} type=\"{kind}\" value=\"{}\" {extra}>",
        esc(value)
    )
}

/// A `<select>` for [`Field`] of (value, label) options.
pub fn select(options: &[(String, String)], selected: &str) -> String {
    let mut out = format!("<select {ATTRS}>");
    for (value, label) in options {
        let _ = write!(
            out,
            "<option value=\"{}\"{}>{}</option>",
            esc(value),
            if value == selected { " selected" } else { "" },
            esc(label)
        );
    }
    out.push_str("</select>");
    out
}

/// Milliseconds since the epoch as UTC, to the second.
pub fn when(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        })
        .unwrap_or_else(|_| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_never_becomes_markup() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(seg("a b/../c"), "a%20b%2F..%2Fc");
        let field = Field {
            name: "name",
            label: "Name",
            control: input("text", "\"><b>", "required"),
            hint: "",
            error: Some("<i>bad</i>"),
        }
        .render();
        assert!(field.contains("id=\"f-name\" name=\"name\""), "{field}");
        assert!(field.contains("value=\"&quot;&gt;&lt;b&gt;\""), "{field}");
        assert!(field.contains("&lt;i&gt;bad&lt;/i&gt;"), "{field}");
        assert!(field.contains("aria-invalid=\"true\""), "{field}");
    }
}
