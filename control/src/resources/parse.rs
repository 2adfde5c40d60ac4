//! Reading YAML files of resources: several documents per file, `kind: List` wrappers,
//! unknown kinds skipped, every error with the file, the resource and the field path.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml_ng::Value;

use super::object::{Object, DEFAULT_NAMESPACE};
use super::{destination_rule, lua_hook, meta_router, service_entry, Resource, Skipped};
use crate::error::{Location, ResourceError, Source};

/// Parses every document of one file. Documents of kinds this control plane does not
/// handle come back as [`Resource::Skipped`]; any problem makes the whole file an error,
/// with every problem found.
pub fn parse_file(path_for_errors: &str, text: &str) -> Result<Vec<Resource>, Vec<ResourceError>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let source = Source {
            file: path_for_errors.to_owned(),
            document: i + 1,
        };
        let mut value = match Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                errors.push(ResourceError::new(
                    Location::new(&source, format!("document {}", i + 1), ""),
                    format!("invalid YAML: {e}"),
                ));
                // The rest of the stream cannot be trusted after a syntax error.
                break;
            }
        };
        if let Err(e) = value.apply_merge() {
            errors.push(ResourceError::new(
                Location::new(&source, format!("document {}", i + 1), ""),
                format!("invalid YAML: {e}"),
            ));
            continue;
        }
        parse_value(&source, value, "", &mut out, &mut errors);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Parses one object as a Kubernetes API server returns it (JSON), with the same checks
/// as a file's documents. `location` stands for the file in errors, e.g.
/// `kubernetes:metamesh.io/v1alpha1`; errors name the object and the field path.
pub fn parse_object(
    location: &str,
    object: &serde_json::Value,
) -> Result<Vec<Resource>, Vec<ResourceError>> {
    let source = Source {
        file: location.to_owned(),
        document: 1,
    };
    let mut out = Vec::new();
    let mut errors = Vec::new();
    match serde_yaml_ng::to_value(object) {
        Ok(value) => parse_value(&source, value, "", &mut out, &mut errors),
        Err(e) => errors.push(ResourceError::new(
            Location::new(&source, "", ""),
            format!("cannot read the object: {e}"),
        )),
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn str_field<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

/// `Kind/namespace/name` as far as the raw document tells, for errors about it.
fn raw_id(source: &Source, value: &Value) -> String {
    let kind = str_field(value, "kind").unwrap_or("");
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE);
    if kind.is_empty() || name.is_empty() {
        format!("document {}", source.document)
    } else {
        format!("{kind}/{namespace}/{name}")
    }
}

fn join_path(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_owned(),
        (false, true) => prefix.to_owned(),
        (false, false) => format!("{prefix}.{path}"),
    }
}

fn parse_value(
    source: &Source,
    value: Value,
    prefix: &str,
    out: &mut Vec<Resource>,
    errors: &mut Vec<ResourceError>,
) {
    if value.is_null() {
        return; // An empty document, e.g. a trailing `---`.
    }
    let id = raw_id(source, &value);
    let err = |path: &str, message: String| {
        ResourceError::new(
            Location::new(source, id.clone(), join_path(prefix, path)),
            message,
        )
    };
    if !value.is_mapping() {
        errors.push(err(
            "",
            "a document must be a mapping with `apiVersion` and `kind`".into(),
        ));
        return;
    }
    let kind = match value.get("kind") {
        Some(Value::String(k)) if !k.is_empty() => k.clone(),
        Some(Value::String(_)) | None => {
            errors.push(err("kind", "missing `kind`".into()));
            return;
        }
        Some(_) => {
            errors.push(err("kind", "must be a string".into()));
            return;
        }
    };
    let api_version = str_field(&value, "apiVersion").unwrap_or("").to_owned();

    if kind == "List" {
        match value.get("items") {
            Some(Value::Sequence(items)) => {
                for (j, item) in items.iter().enumerate() {
                    let p = join_path(prefix, &format!("items[{j}]"));
                    parse_value(source, item.clone(), &p, out, errors);
                }
            }
            None => {}
            Some(_) => errors.push(err("items", "must be a list".into())),
        }
        return;
    }

    let versions: &[&str] = match kind.as_str() {
        "MetaRouter" => meta_router::API_VERSIONS,
        "DestinationRule" => destination_rule::API_VERSIONS,
        "ServiceEntry" => service_entry::API_VERSIONS,
        "LuaHook" => lua_hook::API_VERSIONS,
        _ => {
            let meta = value.get("metadata");
            let name = meta
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let namespace = meta
                .and_then(|m| m.get("namespace"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            out.push(Resource::Skipped(Skipped {
                source: source.clone(),
                api_version,
                kind,
                namespace,
                name,
                path: prefix.to_owned(),
            }));
            return;
        }
    };
    if !versions.contains(&api_version.as_str()) {
        errors.push(err(
            "apiVersion",
            format!(
                "{api_version:?} is not an accepted apiVersion of {kind} (accepted: {})",
                versions.join(", ")
            ),
        ));
        return;
    }
    let parsed = match kind.as_str() {
        "MetaRouter" => typed(source, value).map(Resource::MetaRouter),
        "DestinationRule" => typed(source, value).map(Resource::DestinationRule),
        "ServiceEntry" => typed(source, value).map(Resource::ServiceEntry),
        _ => typed(source, value).map(Resource::LuaHook),
    };
    match parsed {
        Ok(r) => out.push(r),
        Err((path, message)) => errors.push(err(&path, message)),
    }
}

fn typed<S: DeserializeOwned + Default>(
    source: &Source,
    value: Value,
) -> Result<Object<S>, (String, String)> {
    match serde_path_to_error::deserialize::<_, Object<S>>(value) {
        Ok(mut obj) => {
            obj.source = source.clone();
            Ok(obj)
        }
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            Err((path, e.into_inner().to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_documents_and_skipped_kinds() {
        let text = r#"
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: web, namespace: shop }
spec: { replicas: 1 }
---
apiVersion: metamesh.io/v1alpha1
kind: LuaHook
metadata: { name: tag }
spec:
  hosts: [a.example]
  script: "function on_request(req) end"
---
# only a comment
"#;
        let got = parse_file("mesh.yaml", text).expect("parses");
        assert_eq!(got.len(), 2);
        match &got[0] {
            Resource::Skipped(s) => {
                assert_eq!(s.kind, "Deployment");
                // A leading `---` starts the first document.
                assert_eq!(s.source.document, 1);
            }
            other => panic!("{other:?}"),
        }
        match &got[1] {
            Resource::LuaHook(h) => {
                assert_eq!(h.id(), "LuaHook/default/tag");
                assert_eq!(h.source.file, "mesh.yaml");
                assert_eq!(h.source.document, 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_name_file_resource_and_path() {
        let text = r#"
apiVersion: metamesh.io/v1alpha1
kind: MetaRouter
metadata: { name: demo }
spec:
  hosts: [a.example]
  routes:
    - name: r
      route:
        - destination: { host: a.example }
          weight: x
"#;
        let err = parse_file("mesh/dubbo.yaml", text).unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(
            err[0].to_string(),
            "mesh/dubbo.yaml: MetaRouter/default/demo: spec.routes[0].route[0].weight: \
             invalid type: string \"x\", expected u32"
        );
    }

    #[test]
    fn every_bad_document_is_reported() {
        let text = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: one, namespace: ns }
spec: { hostz: [a] }
---
apiVersion: networking.istio.io/v2
kind: DestinationRule
metadata: { name: two }
---
- just a list
---
metadata: { name: three }
"#;
        let err = parse_file("f.yaml", text).unwrap_err();
        let text: Vec<String> = err.iter().map(ToString::to_string).collect();
        assert_eq!(err.len(), 4, "{text:#?}");
        assert!(
            text[0].starts_with("f.yaml: ServiceEntry/ns/one: spec"),
            "{}",
            text[0]
        );
        assert!(text[0].contains("unknown field `hostz`"), "{}", text[0]);
        assert!(
            text[1].starts_with("f.yaml: DestinationRule/default/two: apiVersion: "),
            "{}",
            text[1]
        );
        assert!(text[2].starts_with("f.yaml: document 3: "), "{}", text[2]);
        assert_eq!(text[3], "f.yaml: document 4: kind: missing `kind`");
    }

    #[test]
    fn lists_are_unwrapped() {
        let text = r#"
apiVersion: v1
kind: List
items:
  - apiVersion: metamesh.io/v1alpha1
    kind: LuaHook
    metadata: { name: a }
    spec: { hosts: [x], script: "function on_request(r) end" }
  - apiVersion: metamesh.io/v1alpha1
    kind: LuaHook
    metadata: { name: b }
    spec: { hosts: [x], scrpt: "" }
"#;
        let err = parse_file("l.yaml", text).unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].resource(), "LuaHook/default/b");
        assert!(err[0].path().starts_with("items[1].spec"), "{}", err[0]);
    }

    #[test]
    fn objects_parse_like_documents() {
        let obj = serde_json::json!({
            "apiVersion": "metamesh.io/v1alpha1",
            "kind": "LuaHook",
            "metadata": { "name": "tag", "namespace": "shop", "resourceVersion": "7", "uid": "u" },
            "spec": { "hosts": ["a.example"], "script": "function on_request(r) end" }
        });
        let got = parse_object("kubernetes:metamesh.io/v1alpha1", &obj).expect("parses");
        match &got[..] {
            [Resource::LuaHook(h)] => assert_eq!(h.id(), "LuaHook/shop/tag"),
            other => panic!("{other:?}"),
        }
        let bad = serde_json::json!({
            "apiVersion": "metamesh.io/v1alpha1",
            "kind": "LuaHook",
            "metadata": { "name": "tag", "namespace": "shop" },
            "spec": { "hosts": ["a.example"], "scrpt": "" }
        });
        let err = parse_object("kubernetes:metamesh.io/v1alpha1", &bad).unwrap_err();
        assert_eq!(err.len(), 1);
        assert!(
            err[0].to_string().starts_with(
                "kubernetes:metamesh.io/v1alpha1: LuaHook/shop/tag: spec.scrpt: unknown field `scrpt`"
            ),
            "{}",
            err[0]
        );
    }

    #[test]
    fn syntax_errors_stop_the_file() {
        let err = parse_file("s.yaml", "a: [1, 2\n---\nb: 1\n").unwrap_err();
        assert_eq!(err.len(), 1);
        assert!(
            err[0]
                .to_string()
                .starts_with("s.yaml: document 1: invalid YAML"),
            "{}",
            err[0]
        );
    }
}
