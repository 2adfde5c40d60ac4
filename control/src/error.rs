//! Problems and notes about mesh resources: each names the file, the resource
//! (`Kind/namespace/name`) and the field path it concerns.

use std::fmt;

/// Where a resource came from.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Source {
    /// The file name given to [`crate::parse_file`] (may be empty).
    pub file: String,
    /// 1-based position of the YAML document in its file.
    pub document: usize,
}

/// Where in the input a problem or a note applies.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// The file, empty when unknown.
    pub file: String,
    /// `Kind/namespace/name`, or `document N` when the resource has no identity yet.
    pub resource: String,
    /// Field path inside the resource, e.g. `spec.routes[0].route[0].weight`.
    pub path: String,
}

impl Location {
    /// A location inside the resource `resource` read from `source`.
    pub fn new(source: &Source, resource: impl Into<String>, path: impl Into<String>) -> Self {
        Location {
            file: source.file.clone(),
            resource: resource.into(),
            path: path.into(),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for part in [&self.file, &self.resource, &self.path] {
            if part.is_empty() {
                continue;
            }
            if !first {
                f.write_str(": ")?;
            }
            f.write_str(part)?;
            first = false;
        }
        Ok(())
    }
}

/// One problem with the mesh resources.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, thiserror::Error)]
pub struct ResourceError {
    /// Where it is.
    pub location: Location,
    /// What is wrong.
    pub message: String,
}

impl ResourceError {
    /// A problem at `location`.
    pub fn new(location: Location, message: impl Into<String>) -> Self {
        ResourceError {
            location,
            message: message.into(),
        }
    }

    /// The file the problem is in.
    pub fn file(&self) -> &str {
        &self.location.file
    }

    /// The resource (`Kind/namespace/name`) the problem is in.
    pub fn resource(&self) -> &str {
        &self.location.resource
    }

    /// The field path inside the resource.
    pub fn path(&self) -> &str {
        &self.location.path
    }
}

impl fmt::Display for ResourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let loc = self.location.to_string();
        if loc.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{loc}: {}", self.message)
        }
    }
}

/// Something accepted but not applied as written: a skipped document, an ignored field,
/// a port that is not a meta protocol. Notes never stop a translation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Note {
    /// Where it is.
    pub location: Location,
    /// What happens to it.
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let loc = self.location.to_string();
        if loc.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{loc}: {}", self.message)
        }
    }
}

/// Joins problems into one text, one per line.
pub fn join_errors(errors: &[ResourceError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_skips_empty_parts() {
        let e = ResourceError::new(
            Location {
                file: "mesh/dubbo.yaml".into(),
                resource: "MetaRouter/default/demo".into(),
                path: "spec.routes[0]".into(),
            },
            "bad",
        );
        assert_eq!(
            e.to_string(),
            "mesh/dubbo.yaml: MetaRouter/default/demo: spec.routes[0]: bad"
        );
        let e = ResourceError::new(
            Location {
                file: String::new(),
                resource: "ServiceEntry/a/b".into(),
                path: String::new(),
            },
            "bad",
        );
        assert_eq!(e.to_string(), "ServiceEntry/a/b: bad");
        assert_eq!(
            ResourceError::new(Location::default(), "bad").to_string(),
            "bad"
        );
    }
}
