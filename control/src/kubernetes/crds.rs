//! The CRD manifests of `control/crds/` checked against the resource types: each must be
//! a valid `CustomResourceDefinition` whose schema names exactly the fields the control
//! plane reads, so a field added on one side only fails here.

use std::collections::BTreeSet;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::resources::lua_hook::LuaHookSpec;
use crate::resources::meta_router::{MetaRoute, MetaRouterSpec};

/// The field names a struct with `deny_unknown_fields` accepts, as its error for an
/// unknown field lists them.
fn fields_of<T: DeserializeOwned>() -> BTreeSet<String> {
    let probe = serde_json::json!({ "not-a-field": 0 });
    let Err(e) = serde_json::from_value::<T>(probe) else {
        panic!("the probe field was accepted");
    };
    let text = e.to_string();
    let list = text
        .split_once("expected one of ")
        .map(|(_, l)| l)
        .unwrap_or_else(|| panic!("no field list in {text:?}"));
    list.split(", ")
        .map(|f| f.trim().trim_matches('`').to_owned())
        .collect()
}

fn crd(text: &str) -> CustomResourceDefinition {
    serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("not a CRD: {e}"))
}

fn properties(schema: &JSONSchemaProps) -> BTreeSet<String> {
    schema
        .properties
        .as_ref()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

fn spec_schema(crd: &CustomResourceDefinition) -> JSONSchemaProps {
    assert_eq!(crd.spec.versions.len(), 1);
    let version = &crd.spec.versions[0];
    assert!(version.served && version.storage);
    let root = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("openAPIV3Schema");
    assert_eq!(root.type_.as_deref(), Some("object"));
    root.properties
        .as_ref()
        .and_then(|p| p.get("spec"))
        .cloned()
        .expect("spec schema")
}

#[test]
fn metarouter_crd_matches_the_resource() {
    let crd = crd(include_str!("../../crds/metarouter.yaml"));
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("metarouters.metamesh.io")
    );
    assert_eq!(crd.spec.names.kind, "MetaRouter");
    let spec = spec_schema(&crd);
    assert_eq!(properties(&spec), fields_of::<MetaRouterSpec>());
    let routes = spec
        .properties
        .as_ref()
        .and_then(|p| p.get("routes"))
        .and_then(|r| r.items.as_ref())
        .and_then(|i| match i {
            JSONSchemaPropsOrArray::Schema(s) => Some(s.as_ref().clone()),
            JSONSchemaPropsOrArray::Schemas(_) => None,
        })
        .expect("routes items");
    assert_eq!(properties(&routes), fields_of::<MetaRoute>());
}

#[test]
fn luahook_crd_matches_the_resource() {
    let crd = crd(include_str!("../../crds/luahook.yaml"));
    assert_eq!(crd.metadata.name.as_deref(), Some("luahooks.metamesh.io"));
    assert_eq!(crd.spec.names.kind, "LuaHook");
    assert_eq!(properties(&spec_schema(&crd)), fields_of::<LuaHookSpec>());
}

#[test]
fn crds_name_the_kinds_the_source_watches() {
    for text in [
        include_str!("../../crds/metarouter.yaml"),
        include_str!("../../crds/luahook.yaml"),
    ] {
        let crd = crd(text);
        let watched = super::CUSTOM_KINDS.iter().any(|k| {
            k.group == crd.spec.group
                && k.kind == crd.spec.names.kind
                && k.plural == crd.spec.names.plural
                && k.versions.contains(&crd.spec.versions[0].name.as_str())
        });
        assert!(watched, "{:?} is not watched", crd.metadata.name);
    }
}

#[test]
fn the_cluster_role_grants_what_the_source_reads() {
    use k8s_openapi::api::rbac::v1::ClusterRole;
    let text = include_str!("../../crds/rbac.yaml");
    let role: ClusterRole = serde_yaml_ng::Deserializer::from_str(text)
        .filter_map(|d| {
            let v = serde_yaml_ng::Value::deserialize(d).ok()?;
            (v.get("kind").and_then(|k| k.as_str()) == Some("ClusterRole"))
                .then(|| serde_yaml_ng::from_value(v).ok())
                .flatten()
        })
        .next()
        .expect("a ClusterRole");
    let granted = |group: &str, resource: &str| {
        role.rules.iter().flatten().any(|r| {
            r.api_groups.iter().flatten().any(|g| g == group)
                && r.resources.iter().flatten().any(|x| x == resource)
                && ["list", "watch"]
                    .iter()
                    .all(|v| r.verbs.iter().any(|x| x == v))
        })
    };
    for k in super::CUSTOM_KINDS {
        assert!(granted(k.group, k.plural), "{}.{}", k.plural, k.group);
    }
    for (group, resource) in [
        ("", "services"),
        ("", "pods"),
        ("", "nodes"),
        ("discovery.k8s.io", "endpointslices"),
    ] {
        assert!(granted(group, resource), "{resource}");
    }
}
