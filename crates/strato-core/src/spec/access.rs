//! Who and what reaches a cluster's nodes: the SSH admin user, the virtual
//! network, the managed identities.

use super::{IdentitySpec, MAX_USER_ASSIGNED_IDENTITIES, SshSettings, VnetSettings};
use crate::error::FieldError;

/// Azure's rule for VM admin passwords: 12 to 123 characters, and at least
/// three of lowercase, uppercase, digit and other characters.
pub fn check_admin_password(password: &str) -> Result<(), FieldError> {
    let len = password.chars().count();
    let classes = [
        password.chars().any(|c| c.is_lowercase()),
        password.chars().any(|c| c.is_uppercase()),
        password.chars().any(|c| c.is_ascii_digit()),
        password
            .chars()
            .any(|c| !c.is_alphanumeric() && !c.is_whitespace()),
    ]
    .into_iter()
    .filter(|x| *x)
    .count();
    // The message never repeats the password.
    if !(12..=123).contains(&len) || classes < 3 {
        return Err(FieldError::new(
            "ssh.admin_password",
            "must be 12 to 123 characters and hold at least 3 of: a lowercase letter, an uppercase letter, a digit, another character",
        ));
    }
    Ok(())
}

pub(super) fn check_ssh(ssh: &SshSettings) -> Result<(), FieldError> {
    let has_credential = ssh.has_password() || !ssh.admin_ssh_public_key.is_empty();
    if ssh.admin_username.is_empty() {
        if has_credential || ssh.public_access {
            return Err(FieldError::new(
                "ssh.admin_username",
                "is required when SSH access, a password or a key is given",
            ));
        }
        return Ok(());
    }
    let user = &ssh.admin_username;
    let ok = (1..=32).contains(&user.len())
        && user.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && user
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok {
        return Err(FieldError::new(
            "ssh.admin_username",
            format!(
                "must be 1 to 32 lowercase letters, digits, '_' or '-', starting with a letter or '_'; got {user:?}"
            ),
        ));
    }
    if matches!(
        user.as_str(),
        "root" | "admin" | "administrator" | "daemon" | "bin" | "sys"
    ) {
        return Err(FieldError::new(
            "ssh.admin_username",
            format!("{user:?} is reserved; choose another name"),
        ));
    }
    if !has_credential {
        return Err(FieldError::new(
            "ssh.admin_password",
            "an admin user needs a password or an SSH public key (ssh.admin_ssh_public_key)",
        ));
    }
    if !ssh.admin_password.is_empty() {
        check_admin_password(&ssh.admin_password)?;
    }
    let key = ssh.admin_ssh_public_key.trim();
    if !key.is_empty()
        && !["ssh-rsa ", "ssh-ed25519 ", "ecdsa-sha2-"]
            .iter()
            .any(|p| key.starts_with(p))
    {
        return Err(FieldError::new(
            "ssh.admin_ssh_public_key",
            "must be an OpenSSH public key (starting with ssh-rsa, ssh-ed25519 or ecdsa-sha2-)",
        ));
    }
    Ok(())
}

pub(super) fn check_vnet(vnet: &VnetSettings) -> Result<(), FieldError> {
    let parts = [
        ("vnet.resource_group", &vnet.resource_group),
        ("vnet.vnet_name", &vnet.vnet_name),
        ("vnet.subnet_name", &vnet.subnet_name),
    ];
    let given = parts.iter().filter(|(_, v)| !v.is_empty()).count();
    if given == 0 {
        return Ok(());
    }
    // As Azure ML: a vnet name and a subnet name, with the resource group
    // optional (Azure takes the workspace's).
    if let Some((field, _)) = parts[1..].iter().find(|(_, v)| v.is_empty()) {
        return Err(FieldError::new(
            *field,
            "a vnet name and a subnet name must be given together (the resource group is optional), or none of them",
        ));
    }
    for (field, value) in parts.into_iter().filter(|(_, v)| !v.is_empty()) {
        let ok = value.len() <= 90
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '(' | ')'));
        if !ok {
            return Err(FieldError::new(
                field,
                format!(
                    "must be at most 90 letters, digits, '-', '_', '.', '(' or ')'; got {value:?}"
                ),
            ));
        }
    }
    Ok(())
}

pub fn check_identity(identity: &IdentitySpec) -> Result<(), FieldError> {
    if identity.system_assigned && !identity.user_assigned.is_empty() {
        return Err(FieldError::new(
            "identity",
            "a cluster has either a system-assigned identity or user-assigned identities, never both",
        ));
    }
    if identity.user_assigned.len() > MAX_USER_ASSIGNED_IDENTITIES {
        return Err(FieldError::new(
            "identity.user_assigned_identities",
            format!("at most {MAX_USER_ASSIGNED_IDENTITIES} identities"),
        ));
    }
    for (i, id) in identity.user_assigned.iter().enumerate() {
        let field = format!("identity.user_assigned_identities[{i}]");
        if id.is_empty()
            || id.len() > 512
            || id.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(FieldError::new(
                field,
                "must be an identity resource id of 1 to 512 characters without spaces",
            ));
        }
        if identity.user_assigned[..i]
            .iter()
            .any(|earlier| earlier.eq_ignore_ascii_case(id))
        {
            return Err(FieldError::new(field, format!("{id:?} is listed twice")));
        }
    }
    Ok(())
}
