//! `job create --file job.yml`: an Azure ML CLI v2 command job
//! (`type: command`), read into a wire `JobSpec`.
//!
//! What Strato runs: `command` (in a shell, with `${{inputs.NAME}}` and
//! `${{outputs.NAME}}` replaced by the data's paths in the container, a
//! uri_file's own path, or the literal's text as it is, as Azure ML does), `environment.image`, `environment_variables`,
//! `compute`, `resources.instance_count`, `distribution` (`mpi`, `pytorch`)
//! with `process_count_per_instance`, `inputs` (`uri_folder`/`uri_file` on
//! `azureml://datastores/...` paths, with `mode`, and literal strings,
//! numbers and booleans), `outputs` (`uri_folder`/`uri_file` with a path and
//! `mode`; as in Azure ML, inputs are `ro_mount` and outputs `rw_mount`
//! unless the file says otherwise), `display_name` (or `name`),
//! `limits.timeout`, `experiment_name`, `description`, `tags`. Every other
//! key the schema allows is refused naming it, never ignored.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use serde_norway::Value;
use strato_core::job::{DataMode, DataSide};
use strato_proto::v1;

/// Where the agent puts a job's data in its container (the same paths as
/// `AZURE_ML_INPUT_<name>` / `AZURE_ML_OUTPUT_<name>` hold).
const INPUTS_IN_CONTAINER: &str = "/mnt/strato/inputs";
const OUTPUTS_IN_CONTAINER: &str = "/mnt/strato/outputs";

/// Keys of the command job schema Strato runs, and those it knows but does
/// not run yet (refused with what to do instead).
const RUN: &[&str] = &[
    "$schema",
    "type",
    "display_name",
    "command",
    "environment",
    "environment_variables",
    "compute",
    "resources",
    "distribution",
    "inputs",
    "outputs",
    "limits",
    "experiment_name",
    "description",
    "tags",
    "code",
];
const NOT_YET: &[(&str, &str)] = &[
    (
        "name",
        "Strato names each job itself (job-...); give display_name instead",
    ),
    (
        "identity",
        "a job runs with its cluster's identities: leave it out",
    ),
    (
        "services",
        "job services (Jupyter, SSH) are not run: use `strato compute connect-ssh`",
    ),
    (
        "queue_settings",
        "queue settings are not supported: leave them out",
    ),
    ("properties", "job properties are not kept: leave them out"),
    ("parameters", "parameters are not supported: use inputs"),
];

/// A command job as read: the spec to submit, and the local code folder
/// (or file) to upload first, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFile {
    pub spec: v1::JobSpec,
    /// `code:` as written; relative to the YAML file's folder.
    pub code: Option<std::path::PathBuf>,
}

/// Reads `path` as a command job; a relative `code:` is taken from the
/// file's own folder, as Azure ML does.
pub fn load(path: &std::path::Path) -> anyhow::Result<JobFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--file {}", path.display()))?;
    let mut job = parse(&text).with_context(|| format!("--file {}", path.display()))?;
    if let Some(code) = &job.code
        && code.is_relative()
    {
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        job.code = Some(base.join(code).components().collect());
    }
    if let Some(code) = &job.code
        && !code.exists()
    {
        bail!(
            "--file {}: code: {}: no such folder or file",
            path.display(),
            code.display()
        );
    }
    Ok(job)
}

fn text(value: &Value, key: &str) -> anyhow::Result<String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(if *b { "True" } else { "False" }.to_owned()),
        _ => bail!("{key}: must be a string"),
    }
}

fn mapping<'a>(value: &'a Value, key: &str) -> anyhow::Result<&'a serde_norway::Mapping> {
    value
        .as_mapping()
        .with_context(|| format!("{key}: must be a mapping"))
}

fn key_name(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => serde_norway::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

/// Refuses a key of `section` not among `known`.
fn only(section: &str, map: &serde_norway::Mapping, known: &[&str]) -> anyhow::Result<()> {
    for key in map.keys() {
        let key = key_name(key);
        if !known.contains(&key.as_str()) {
            bail!(
                "{section}.{key}: not supported by Strato (it takes {})",
                known.join(", ")
            );
        }
    }
    Ok(())
}

pub fn parse(text_in: &str) -> anyhow::Result<JobFile> {
    let doc: Value = serde_norway::from_str(text_in)?;
    let top = mapping(&doc, "the file")?;
    for key in top.keys() {
        let key = key_name(key);
        if let Some((_, why)) = NOT_YET.iter().find(|(k, _)| *k == key) {
            bail!("{key}: {why}");
        }
        if !RUN.contains(&key.as_str()) {
            bail!("{key}: not a key of a command job that Strato runs");
        }
    }
    let get = |key: &str| top.get(key);
    match get("type").map(|t| text(t, "type")).transpose()? {
        None => {}
        Some(t) if t == "command" => {}
        Some(t) => bail!("type: {t:?}: Strato runs command jobs only (type: command)"),
    }
    let mut spec = v1::JobSpec::default();
    let command = match get("command") {
        Some(Value::String(c)) if !c.trim().is_empty() => c.clone(),
        Some(_) => bail!("command: must be a string"),
        None => bail!("command: required"),
    };
    if command.contains("$[[") {
        bail!(
            "command: optional parts ($[[ ... ]]) are not supported: write the command without them"
        );
    }
    let compute = get("compute")
        .map(|c| text(c, "compute"))
        .transpose()?
        .context("compute: required (azureml:NAME or NAME)")?;
    let compute = compute.strip_prefix("azureml:").unwrap_or(&compute);
    // A compute's resource id (azureml:/subscriptions/.../computes/NAME).
    spec.cluster = match compute.rsplit_once("/computes/") {
        Some((_, name)) => name.to_owned(),
        None => compute.to_owned(),
    };
    if let Some(d) = get("display_name") {
        spec.display_name = text(d, "display_name")?;
    }
    match get("environment").context("environment: required (with an image)")? {
        Value::String(s) => bail!(
            "environment: {s:?}: registered environments are not supported; give the image: `environment: {{image: REGISTRY/IMAGE:TAG}}`"
        ),
        env => {
            let env = mapping(env, "environment")?;
            for key in env.keys() {
                let key = key_name(key);
                match key.as_str() {
                    "image" => {}
                    "conda_file" | "build" => bail!(
                        "environment.{key}: Strato does not build environments; build the image yourself and give environment.image"
                    ),
                    other => bail!("environment.{other}: not supported by Strato (it takes image)"),
                }
            }
            spec.image = env
                .get("image")
                .map(|i| text(i, "environment.image"))
                .transpose()?
                .context("environment.image: required")?;
        }
    }
    if let Some(vars) = get("environment_variables") {
        for (k, v) in mapping(vars, "environment_variables")? {
            let k = key_name(k);
            let v = text(v, &format!("environment_variables.{k}"))?;
            spec.environment.insert(k, v);
        }
    }
    if let Some(resources) = get("resources") {
        let resources = mapping(resources, "resources")?;
        only("resources", resources, &["instance_count"])?;
        if let Some(count) = resources.get("instance_count") {
            spec.node_count = whole(count)
                .filter(|c| *c >= 1)
                .context("resources.instance_count: a whole number, at least 1")?;
        }
    }
    // Several nodes without a distribution each run the command, with no
    // launcher (as Azure ML does).
    if get("distribution").is_none() {
        spec.distribution = v1::Distribution::None as i32;
    }
    if let Some(distribution) = get("distribution") {
        let d = mapping(distribution, "distribution")?;
        let kind = d
            .get("type")
            .map(|t| text(t, "distribution.type"))
            .transpose()?
            .context("distribution.type: required (mpi or pytorch)")?;
        spec.distribution = match kind.to_lowercase().as_str() {
            "mpi" => v1::Distribution::Mpi,
            "pytorch" => v1::Distribution::Pytorch,
            "tensorflow" => bail!(
                "distribution.type: tensorflow is not wired by Strato yet; use mpi or pytorch"
            ),
            other => bail!("distribution.type: {other:?} must be mpi or pytorch"),
        } as i32;
        only("distribution", d, &["type", "process_count_per_instance"])?;
        if let Some(p) = d.get("process_count_per_instance") {
            spec.process_count_per_node = whole(p)
                .filter(|c| *c >= 1)
                .context("distribution.process_count_per_instance: a whole number, at least 1")?;
        }
    }
    if let Some(limits) = get("limits") {
        let limits = mapping(limits, "limits")?;
        only("limits", limits, &["timeout"])?;
        if let Some(t) = limits.get("timeout") {
            spec.timeout_seconds = Some(
                t.as_u64()
                    .filter(|t| *t >= 1)
                    .context("limits.timeout: whole seconds, at least 1")?,
            );
        }
    }
    if let Some(name) = get("experiment_name") {
        spec.experiment_name = text(name, "experiment_name")?;
    }
    if let Some(description) = get("description") {
        spec.description = text(description, "description")?;
    }
    if let Some(tags) = get("tags") {
        for (k, v) in mapping(tags, "tags")? {
            let k = key_name(k);
            let v = text(v, &format!("tags.{k}"))?;
            spec.tags.insert(k, v);
        }
    }
    // What ${{inputs.X}} and ${{outputs.X}} stand for in the command.
    let mut bindings: BTreeMap<String, String> = BTreeMap::new();
    if let Some(inputs) = get("inputs") {
        for (name, input) in mapping(inputs, "inputs")? {
            let name = key_name(name);
            let field = format!("inputs.{name}");
            match input {
                Value::Mapping(m) if m.contains_key("path") || m.contains_key("type") => {
                    let (input, file) = data(&field, &name, m, true)?;
                    spec.inputs.push(input);
                    // A uri_file is the file itself, under its own name.
                    let at = match file {
                        Some(file) => format!("{INPUTS_IN_CONTAINER}/{name}/{file}"),
                        None => format!("{INPUTS_IN_CONTAINER}/{name}"),
                    };
                    bindings.insert(format!("inputs.{name}"), at);
                }
                Value::Mapping(m) => {
                    // A literal written as {value: V} (or with a type).
                    only(&field, m, &["value", "type", "description"])?;
                    let value = m
                        .get("value")
                        .with_context(|| format!("{field}.value: required"))?;
                    bindings.insert(field.clone(), text(value, &field)?);
                }
                // As Azure ML: the literal's text, as it is, in the command.
                literal => {
                    bindings.insert(field.clone(), text(literal, &field)?);
                }
            }
        }
    }
    if let Some(outputs) = get("outputs") {
        for (name, output) in mapping(outputs, "outputs")? {
            let name = key_name(name);
            let field = format!("outputs.{name}");
            let m = mapping(output, &field)?;
            spec.outputs.push(data(&field, &name, m, false)?.0);
            bindings.insert(field, format!("{OUTPUTS_IN_CONTAINER}/{name}"));
        }
    }
    spec.command = vec!["sh".into(), "-c".into(), substitute(&command, &bindings)?];
    let code = match get("code") {
        None => None,
        Some(code) => {
            let code = text(code, "code")?;
            if code.starts_with("azureml:") || code.contains("://") || code.starts_with("git+") {
                bail!(
                    "code: {code:?}: Strato uploads a local folder (or file) only; registered code assets and URLs are not supported"
                );
            }
            if code.trim().is_empty() {
                bail!("code: must name a local folder");
            }
            Some(std::path::PathBuf::from(code))
        }
    };
    Ok(JobFile { spec, code })
}

/// A count as Azure's schema takes one: a whole number, or a string of one.
fn whole(value: &Value) -> Option<u32> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as u64)
            })
            .and_then(|c| u32::try_from(c).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// An input or output of type uri_folder / uri_file on a datastore path;
/// for a uri_file, also the file's name.
fn data(
    field: &str,
    name: &str,
    m: &serde_norway::Mapping,
    input: bool,
) -> anyhow::Result<(v1::JobData, Option<String>)> {
    only(field, m, &["type", "path", "mode"])?;
    let kind = m
        .get("type")
        .map(|t| text(t, &format!("{field}.type")))
        .transpose()?
        .unwrap_or_else(|| "uri_folder".to_owned())
        .to_lowercase();
    if kind == "uri_file" && !input {
        bail!("{field}.type: uri_file outputs are not supported yet: use uri_folder");
    }
    if kind != "uri_folder" && kind != "uri_file" {
        bail!("{field}.type: {kind:?}: Strato takes uri_folder and uri_file");
    }
    // An output without a path goes to the default datastore
    // (azureml/<job>/<output>), as Azure ML's does: the control plane
    // places it.
    let path = match m.get("path") {
        Some(p) => text(p, &format!("{field}.path"))?,
        None if input => bail!("{field}.path: required"),
        None => String::new(),
    };
    // An output's ${{name}} is the job's name, filled in by the control
    // plane; no other placeholder is.
    let placeholders = if input {
        path.clone()
    } else {
        path.replace("${{name}}", "")
    };
    if placeholders.contains("${{") {
        bail!(
            "{field}.path: placeholders other than an output's ${{{{name}}}} are not supported: give the whole path"
        );
    }
    if !path.is_empty() && !path.starts_with("azureml://datastores/") {
        bail!(
            "{field}.path: {path:?}: Strato reads datastore paths only (azureml://datastores/<datastore>/paths/<path>)"
        );
    }
    // Azure ML's defaults: inputs mounted read-only, outputs read-write. A
    // single file is downloaded: a mount serves folders.
    let file = (kind == "uri_file").then(|| {
        path.trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned()
    });
    let mode = m
        .get("mode")
        .map(|v| text(v, &format!("{field}.mode")))
        .transpose()?
        .map(|m| m.to_lowercase())
        .unwrap_or_else(|| {
            match (input, &file) {
                (true, Some(_)) => "download",
                (true, None) => "ro_mount",
                (false, _) => "rw_mount",
            }
            .to_owned()
        });
    if file.is_some() && mode.ends_with("_mount") {
        bail!(
            "{field}.mode: a uri_file is downloaded (mode: download); mounts serve uri_folder data"
        );
    }
    let side = if input {
        DataSide::Input
    } else {
        DataSide::Output
    };
    DataMode::parse(side, &format!("{field}.mode"), &mode).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((
        v1::JobData {
            name: name.to_owned(),
            uri: path,
            mode,
            ..Default::default()
        },
        file,
    ))
}

/// The command with each `${{inputs.X}}` / `${{outputs.X}}` replaced; one
/// that names nothing the job has is refused.
fn substitute(command: &str, bindings: &BTreeMap<String, String>) -> anyhow::Result<String> {
    let mut out = String::with_capacity(command.len());
    let mut rest = command;
    while let Some(start) = rest.find("${{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 3..];
        let end = after
            .find("}}")
            .context("command: a ${{ without its closing }}")?;
        let reference = after[..end].trim();
        let value = bindings.get(reference).with_context(|| {
            format!("command: ${{{{{reference}}}}} names no input or output of the job")
        })?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of `tests/job-yaml` through azure-ai-ml's `load_job` (the
    /// oracle, in .data/venv) and through this reader: what Azure refuses,
    /// Strato refuses; what it accepts, Strato runs with the same command,
    /// image, compute, nodes, distribution, variables and data, or, for the
    /// files named `not-yet-*`, refuses naming the key it does not run.
    #[test]
    fn job_yaml_reads_as_azure_ml_reads_it() {
        for (name, path, azure) in crate::oracle::answers("load_job.py", "job-yaml") {
            let strato = load(&path).map(|job| {
                // Azure gives a local code path as written.
                let folder = |p: &std::path::Path| p.file_name().map(|f| f.to_owned());
                assert_eq!(
                    job.code.as_deref().and_then(folder),
                    azure["values"]["code"]
                        .as_str()
                        .and_then(|c| folder(std::path::Path::new(c))),
                    "{name}: code"
                );
                job.spec
            });
            match (azure["ok"].as_bool(), strato) {
                (Some(true), Ok(spec)) if !name.starts_with("not-yet-") => {
                    let v = &azure["values"];
                    let mut command = v["command"].as_str().expect("command").to_owned();
                    let mut inputs = Vec::new();
                    for (input, d) in v["inputs"].as_object().expect("inputs") {
                        let path = d["path"].as_str().unwrap_or("");
                        // Azure gives a uri_file as the file's own path.
                        let (at, default_mode) = if d["type"] == "uri_file" {
                            let file = path.rsplit('/').next().unwrap_or_default();
                            (format!("/mnt/strato/inputs/{input}/{file}"), "download")
                        } else {
                            (format!("/mnt/strato/inputs/{input}"), "ro_mount")
                        };
                        command = command.replace(&format!("${{{{inputs.{input}}}}}"), &at);
                        inputs.push((
                            input.clone(),
                            path.to_owned(),
                            d["mode"].as_str().unwrap_or(default_mode).to_owned(),
                        ));
                    }
                    for (literal, value) in v["literals"].as_object().expect("literals") {
                        command = command.replace(
                            &format!("${{{{inputs.{literal}}}}}"),
                            value.as_str().expect("a literal"),
                        );
                    }
                    let mut outputs = Vec::new();
                    for (output, d) in v["outputs"].as_object().expect("outputs") {
                        command = command.replace(
                            &format!("${{{{outputs.{output}}}}}"),
                            &format!("/mnt/strato/outputs/{output}"),
                        );
                        outputs.push((
                            output.clone(),
                            d["path"].as_str().unwrap_or("").to_owned(),
                            d["mode"].as_str().unwrap_or("rw_mount").to_owned(),
                        ));
                    }
                    let data = |list: &[v1::JobData]| -> Vec<(String, String, String)> {
                        list.iter()
                            .map(|d| (d.name.clone(), d.uri.clone(), d.mode.clone()))
                            .collect()
                    };
                    let variables: BTreeMap<String, String> =
                        serde_json::from_value(v["environment_variables"].clone()).expect("vars");
                    // No distribution: each node runs the command as it is.
                    let distribution = match v["distribution"].as_str() {
                        None => v1::Distribution::None,
                        Some("mpi") => v1::Distribution::Mpi,
                        Some("pytorch") => v1::Distribution::Pytorch,
                        Some(other) => panic!("{name}: distribution {other}"),
                    } as i32;
                    assert_eq!(
                        (
                            spec.command.clone(),
                            spec.image.as_str(),
                            spec.cluster.as_str(),
                            spec.node_count.max(1),
                            spec.distribution,
                            spec.process_count_per_node.max(1),
                            spec.environment
                                .clone()
                                .into_iter()
                                .collect::<BTreeMap<_, _>>(),
                            data(&spec.inputs),
                            data(&spec.outputs),
                            spec.display_name.as_str(),
                        ),
                        (
                            vec!["sh".to_owned(), "-c".to_owned(), command],
                            v["image"].as_str().expect("image"),
                            // A compute's resource id names the compute last.
                            v["compute"]
                                .as_str()
                                .expect("compute")
                                .rsplit("/computes/")
                                .next()
                                .unwrap_or_default(),
                            u32::try_from(v["instance_count"].as_u64().unwrap_or(1))
                                .expect("count"),
                            distribution,
                            u32::try_from(v["process_count_per_instance"].as_u64().unwrap_or(1))
                                .expect("count"),
                            variables,
                            inputs,
                            outputs,
                            v["display_name"].as_str().unwrap_or(""),
                        ),
                        "{name}: Strato and azure-ai-ml disagree"
                    );
                    let tags: BTreeMap<String, String> =
                        serde_json::from_value(v["tags"].clone()).expect("tags");
                    assert_eq!(
                        (
                            spec.timeout_seconds,
                            spec.experiment_name.as_str(),
                            spec.description.as_str(),
                            spec.tags.clone().into_iter().collect::<BTreeMap<_, _>>(),
                        ),
                        (
                            v["timeout"].as_u64(),
                            v["experiment_name"].as_str().unwrap_or(""),
                            v["description"].as_str().unwrap_or(""),
                            tags,
                        ),
                        "{name}: Strato and azure-ai-ml disagree on the metadata"
                    );
                }
                (Some(false), Err(_)) => {}
                (Some(true), Err(e)) if name.starts_with("not-yet-") => {
                    let said = format!("{e:#}");
                    assert!(said.contains(": "), "{name}: names the key: {said}");
                }
                (_, strato) => crate::oracle::disagree(&name, &azure, &strato),
            }
        }
    }

    const JOB: &str = r#"
$schema: https://azuremlschemas.azureedge.net/latest/commandJob.schema.json
type: command
command: python train.py --data ${{inputs.training_data}} --lr ${{inputs.lr}} --out ${{ outputs.model }}
environment:
  image: mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04
compute: azureml:cpu-cluster
resources:
  instance_count: 2
distribution:
  type: pytorch
  process_count_per_instance: 2
inputs:
  training_data:
    type: uri_folder
    path: azureml://datastores/lake/paths/data/
    mode: ro_mount
  lr: 0.01
  name: "it's"
outputs:
  model:
    type: uri_folder
    path: azureml://datastores/lake/paths/models/
    mode: rw_mount
environment_variables:
  EPOCHS: 3
display_name: train
"#;

    #[test]
    fn a_command_job_becomes_a_job_spec() {
        let spec = parse(JOB).expect("parses").spec;
        assert_eq!(spec.cluster, "cpu-cluster");
        assert_eq!(
            spec.image,
            "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04"
        );
        assert_eq!((spec.node_count, spec.process_count_per_node), (2, 2));
        assert_eq!(spec.distribution, v1::Distribution::Pytorch as i32);
        assert_eq!(spec.display_name, "train");
        assert_eq!(
            spec.environment.get("EPOCHS").map(String::as_str),
            Some("3")
        );
        assert_eq!(
            spec.command,
            [
                "sh",
                "-c",
                "python train.py --data /mnt/strato/inputs/training_data --lr 0.01 --out /mnt/strato/outputs/model"
            ]
        );
        assert_eq!(
            (spec.inputs[0].name.as_str(), spec.inputs[0].mode.as_str()),
            ("training_data", "ro_mount")
        );
        assert_eq!(spec.outputs[0].mode, "rw_mount");
    }

    #[test]
    fn what_strato_does_not_run_is_refused_naming_the_key() {
        for (change, says) in [
            (
                ("code: azureml:my-code:1\n", ""),
                "code: \"azureml:my-code:1\": Strato uploads a local folder",
            ),
            (
                ("limits:\n  max_total_trials: 3\n", ""),
                "limits.max_total_trials",
            ),
            (("", "type: command"), "type: \"sweep\""),
            (
                ("resources:\n  instance_type: gpu\n", ""),
                "resources.instance_type",
            ),
            (
                (
                    "",
                    "  image: mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04",
                ),
                "environment.conda_file",
            ),
            (("", "command: python"), "${{inputs.nope}} names no input"),
        ] {
            let mut text = JOB.replace("resources:\n  instance_count: 2\n", "");
            text.push_str(change.0);
            match change.1 {
                "type: command" => text = text.replace("type: command", "type: sweep"),
                "  image: mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04" => {
                    text = text.replace(change.1, "  conda_file: env.yml")
                }
                "command: python" => {
                    text = text.replace(change.1, "command: echo ${{inputs.nope}} python")
                }
                _ => {}
            }
            let e = parse(&text).expect_err(says);
            assert!(format!("{e:#}").contains(says), "{says}: {e:#}");
        }
    }
}
