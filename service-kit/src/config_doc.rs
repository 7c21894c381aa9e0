//! The configuration reference, written from the flags themselves (clap's `Command`), so the
//! document cannot drift from the code: each service's unit test compares its section of
//! `docs/configuration.md` with what its flags say now, and rewrites it when asked
//! (`UPDATE_DOCS=1`).

use std::path::Path;

use clap::Command;

/// The reference of `command`'s flags as a Markdown table: flag, environment variable, default,
/// what it does.
pub fn markdown(command: &Command) -> String {
    let mut text = String::from("| flag | environment | default | what it does |\n|---|---|---|---|\n");
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if ["help", "version"].contains(&long) {
            continue;
        }
        let env = arg.get_env().map(|env| format!("`{}`", env.to_string_lossy())).unwrap_or_default();
        let defaults: Vec<String> =
            arg.get_default_values().iter().map(|value| value.to_string_lossy().into_owned()).collect();
        let default = match defaults.as_slice() {
            [] => String::new(),
            [one] if one.is_empty() => "(empty)".to_owned(),
            values => format!("`{}`", values.join(",")),
        };
        let help = arg.get_long_help().or(arg.get_help()).map(|help| help.to_string()).unwrap_or_default();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "\\|");
        let possible = arg.get_possible_values();
        let choices: Vec<&str> = possible.iter().map(|value| value.get_name()).collect();
        // A flag that takes a value of a few names lists them; a boolean's true and false go without saying.
        let help = if choices.is_empty() || choices == ["true", "false"] {
            help
        } else {
            format!("{}. One of `{}`.", help.trim_end_matches('.'), choices.join("`, `"))
        };
        text += &format!("| `--{long}` | {env} | {default} | {help} |\n");
    }
    text
}

/// Checks (or, with `UPDATE_DOCS=1`, rewrites) the section of `document` between the markers
/// `<!-- NAME:begin -->` and `<!-- NAME:end -->` against `command`'s reference; the error says
/// how to update it.
pub fn check_section(document: &Path, name: &str, command: &Command) -> Result<(), String> {
    let text = std::fs::read_to_string(document).map_err(|error| format!("{}: {error}", document.display()))?;
    let (begin, end) = (format!("<!-- {name}:begin -->\n"), format!("<!-- {name}:end -->"));
    let start =
        text.find(&begin).ok_or_else(|| format!("{} has no {begin:?} marker", document.display()))? + begin.len();
    let stop =
        start + text[start..].find(&end).ok_or_else(|| format!("{} has no {end:?} marker", document.display()))?;
    let wanted = markdown(command);
    if text[start..stop] == wanted {
        return Ok(());
    }
    if std::env::var_os("UPDATE_DOCS").is_some() {
        let updated = format!("{}{wanted}{}", &text[..start], &text[stop..]);
        return std::fs::write(document, updated).map_err(|error| format!("{}: {error}", document.display()));
    }
    Err(format!(
        "{}'s {name} section differs from the flags: run `UPDATE_DOCS=1 cargo test -p {name} configuration_reference`",
        document.display()
    ))
}
