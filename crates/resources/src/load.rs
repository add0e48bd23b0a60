//! Manifest files to resources: multi-document YAML in the Kubernetes manifest format.

use crate::{Diagnostic, Kind, Resource, ResourceRef, Severity, Source};
use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use std::sync::Arc;

/// What one manifest file held.
#[derive(Debug, Default)]
pub struct ParsedFile {
    /// Objects of the kinds Portico reads, in file order.
    pub resources: Vec<(Resource, Source)>,
    /// Errors (the object was not read) and warnings (it was, with a remark).
    pub diagnostics: Vec<Diagnostic>,
    /// `apiVersion kind` of documents that were skipped because Portico does not read that kind.
    pub ignored: Vec<String>,
}

impl ParsedFile {
    /// Whether any document of the file failed.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.severity == Severity::Error)
    }
}

/// A document of a multi-document YAML file and the line it starts on (1-based).
struct Document<'a> {
    line: usize,
    text: &'a str,
}

/// Splits at `---` lines. Done by hand, rather than by the YAML parser's multi-document reader, so that a
/// broken document costs only itself and every object knows the line it starts on.
fn split_documents(text: &str) -> Vec<Document<'_>> {
    let mut documents = Vec::new();
    let mut start_byte = 0usize;
    let mut start_line = 1usize;
    let mut offset = 0usize;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end();
        if bare == "---" || bare.starts_with("--- ") || bare == "..." {
            documents.push(Document { line: start_line, text: &text[start_byte..offset] });
            start_byte = offset + line.len();
            start_line = index + 2;
        }
        offset += line.len();
    }
    documents.push(Document { line: start_line, text: &text[start_byte..] });
    documents
}

/// The message of a repeated mapping key (see [`YamlJson`]).
const REPEATED_KEY: &str = "repeated mapping key";

/// A YAML document as a JSON value. With `REFUSE_REPEATS`, a repeated mapping key is an error (serde_json's own
/// visitor keeps the last silently; Portico warns, as the object may not be what its author meant); without,
/// the last value wins. Merge keys (`<<: *base`) are expanded as kubectl does: the mapping's own keys win.
///
/// The parser is serde_norway: on the benchmark's 10,000 generated HTTPRoutes (3.2 MB, 10,005 documents) it
/// reads them in 171 ms where serde-saphyr 2.2 took 402 ms, and loading is most of `portico translate`.
struct YamlJson<const REFUSE_REPEATS: bool>(serde_json::Value);

impl<'de, const REFUSE_REPEATS: bool> Deserialize<'de> for YamlJson<REFUSE_REPEATS> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(YamlJsonVisitor::<REFUSE_REPEATS>).map(YamlJson)
    }
}

struct YamlJsonVisitor<const REFUSE_REPEATS: bool>;

impl<'de, const REFUSE_REPEATS: bool> Visitor<'de> for YamlJsonVisitor<REFUSE_REPEATS> {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        // JSON has no NaN or infinity; serde_json's own visitor makes them null too.
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        YamlJson::<REFUSE_REPEATS>::deserialize(deserializer).map(|v| v.0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(YamlJson::<REFUSE_REPEATS>(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(items.into())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = serde_json::Map::new();
        let mut merged = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let YamlJson::<REFUSE_REPEATS>(value) = map.next_value()?;
            if key == "<<" {
                merged.push(value);
                continue;
            }
            if REFUSE_REPEATS && object.contains_key(&key) {
                return Err(A::Error::custom(format!("{REPEATED_KEY} {key:?}")));
            }
            object.insert(key, value);
        }
        // `<<: *base` or `<<: [*a, *b]`: keys the mapping lacks, the first merged mapping first.
        for value in merged {
            let sources = match value {
                serde_json::Value::Array(items) => items,
                other => vec![other],
            };
            for source in sources {
                let serde_json::Value::Object(source) = source else {
                    return Err(A::Error::custom("a merge key (<<) must name a mapping or a list of mappings"));
                };
                for (key, value) in source {
                    object.entry(key).or_insert(value);
                }
            }
        }
        Ok(object.into())
    }
}

fn file_error(file: &str, line: usize, message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        file: Some(file.to_string()),
        line: Some(line),
        resource: None,
        field: None,
        message,
    }
}

/// Parses every document of a manifest file. Objects without a namespace get `default_namespace`.
///
/// A document that is not valid YAML, or whose object does not match its kind's schema, is reported and
/// skipped; the other documents are still read. Repeated mapping keys (which helm renders for some labels)
/// are accepted with a warning, the last value winning, as kubectl does.
pub fn parse_manifests(file: &str, text: &str, default_namespace: &str) -> ParsedFile {
    let mut parsed = ParsedFile::default();
    let file_name: Arc<str> = Arc::from(file);
    for document in split_documents(text) {
        if document.text.trim().is_empty() {
            continue;
        }
        let strict = serde_norway::from_str::<YamlJson<true>>(document.text);
        let value = match strict {
            Ok(YamlJson(value)) => value,
            Err(strict_error) => {
                let (line_in_document, message) = describe_yaml_error(&strict_error);
                let line = document.line + line_in_document.saturating_sub(1);
                // A repeated key: read again, the last value winning (serde_json's maps keep the last).
                let lenient = message
                    .contains(REPEATED_KEY)
                    .then(|| serde_norway::from_str::<YamlJson<false>>(document.text).ok().map(|v| v.0))
                    .flatten();
                match lenient {
                    Some(value) => {
                        let mut warning =
                            file_error(file, line, format!("repeated mapping key, the last value is used: {message}"));
                        warning.severity = Severity::Warning;
                        parsed.diagnostics.push(warning);
                        value
                    }
                    None => {
                        parsed.diagnostics.push(file_error(file, line, format!("invalid YAML: {message}")));
                        continue;
                    }
                }
            }
        };
        if value.is_null() {
            continue;
        }
        let source = Source { file: file_name.clone(), line: document.line, text: Arc::from(document.text) };
        match decode(value, default_namespace) {
            Decoded::Resource(resource) => parsed.resources.push((resource, source)),
            Decoded::Ignored(what) => parsed.ignored.push(what),
            Decoded::Failed { resource, field, message } => {
                let mut diagnostic = match resource {
                    Some(resource) => Diagnostic::error(resource, field, message),
                    None => file_error(file, document.line, message),
                };
                diagnostic.file = Some(file.to_string());
                diagnostic.line = Some(match &diagnostic.field {
                    Some(field) => source.line_of(field),
                    None => source.line,
                });
                parsed.diagnostics.push(diagnostic);
            }
        }
    }
    parsed
}

/// Decodes one object as the API server (or a manifest) gives it. `Ok(None)` for kinds Portico does not read;
/// an error names the resource and field.
// The error is built once per broken object per load; boxing it would only move the allocation.
#[allow(clippy::result_large_err)]
pub fn decode_object(value: serde_json::Value, default_namespace: &str) -> Result<Option<Resource>, Diagnostic> {
    match decode(value, default_namespace) {
        Decoded::Resource(resource) => Ok(Some(resource)),
        Decoded::Ignored(_) => Ok(None),
        Decoded::Failed { resource: Some(resource), field, message } => {
            Err(Diagnostic::error(resource, field, message))
        }
        Decoded::Failed { resource: None, field, message } => Err(Diagnostic {
            severity: Severity::Error,
            file: None,
            line: None,
            resource: None,
            field: Some(field).filter(|f| !f.is_empty()),
            message,
        }),
    }
}

/// The line (within the document) and the message of a YAML error. The parser says "PROBLEM at line L column
/// C, while parsing CONTEXT at line L2 column C2", counting from the document's start; the diagnostic gives
/// the file's line instead, that of the construct being parsed when there is one (where an unclosed bracket
/// opened, rather than the end of the document where that was noticed).
fn describe_yaml_error(error: &serde_norway::Error) -> (usize, String) {
    let text = error.to_string();
    let text = text.lines().next().unwrap_or("");
    let mut line = error.location().map_or(1, |l| l.line());
    let mut message = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(" at line ") {
        let (before, after) = rest.split_at(at);
        let position = &after[" at line ".len()..];
        let digits: String = position.chars().take_while(char::is_ascii_digit).collect();
        let Ok(found) = digits.parse::<usize>() else { break };
        if before.contains("while parsing") {
            line = found;
        }
        message.push_str(before);
        // Skip "L column C".
        let skipped = position.find(',').unwrap_or(position.len());
        rest = &position[skipped..];
    }
    message.push_str(rest);
    (line.max(1), message)
}

enum Decoded {
    Resource(Resource),
    Ignored(String),
    Failed { resource: Option<ResourceRef>, field: String, message: String },
}

fn decode(mut value: serde_json::Value, default_namespace: &str) -> Decoded {
    let Some(object) = value.as_object_mut() else {
        return Decoded::Failed {
            resource: None,
            field: String::new(),
            message: "a manifest must be a mapping with apiVersion, kind and metadata".into(),
        };
    };
    let api_version = object.get("apiVersion").and_then(|v| v.as_str()).unwrap_or("").trim().to_string();
    let kind_name = object.get("kind").and_then(|v| v.as_str()).unwrap_or("").trim().to_string();
    if api_version.is_empty() || kind_name.is_empty() {
        return Decoded::Failed {
            resource: None,
            field: if api_version.is_empty() { "apiVersion" } else { "kind" }.into(),
            message: "a manifest needs apiVersion and kind".into(),
        };
    }
    let Some(kind) = Kind::from_manifest(&api_version, &kind_name) else {
        return Decoded::Ignored(format!("{api_version} {kind_name}"));
    };
    // Normalise: trim stray spaces in apiVersion (helm output has some), default the namespace.
    object.insert("apiVersion".into(), serde_json::Value::String(api_version));
    let metadata = object.entry("metadata").or_insert_with(|| serde_json::json!({}));
    let name = metadata.get("name").and_then(|n| n.as_str()).unwrap_or("").to_string();
    if let Some(metadata) = metadata.as_object_mut() {
        if kind.namespaced() {
            let namespace = metadata.get("namespace").and_then(|n| n.as_str()).unwrap_or("");
            if namespace.is_empty() {
                metadata.insert("namespace".into(), default_namespace.into());
            }
        } else {
            metadata.remove("namespace");
        }
    }
    let namespace = if kind.namespaced() {
        value["metadata"]["namespace"].as_str().unwrap_or(default_namespace).to_string()
    } else {
        String::new()
    };
    let reference = ResourceRef::new(kind, namespace, name.clone());
    if name.is_empty() {
        return Decoded::Failed {
            resource: Some(reference),
            field: "metadata.name".into(),
            message: "is required".into(),
        };
    }
    let fail = |(field, message)| Decoded::Failed { resource: Some(reference.clone()), field, message };
    let resource = match kind {
        Kind::Namespace => typed(value).map(Resource::Namespace),
        Kind::Secret => serde_path_to_error::deserialize(value).map_err(field_error).map(
            |mut secret: k8s_openapi::api::core::v1::Secret| {
                // `stringData` is write-only on the API server: fold it into `data` as it does.
                if let Some(strings) = secret.string_data.take() {
                    let data = secret.data.get_or_insert_with(Default::default);
                    for (key, text) in strings {
                        data.insert(key, k8s_openapi::ByteString(text.into_bytes()));
                    }
                }
                Resource::Secret(Arc::new(secret))
            },
        ),
        Kind::ConfigMap => typed(value).map(Resource::ConfigMap),
        Kind::Service => typed(value).map(Resource::Service),
        Kind::EndpointSlice => typed(value).map(Resource::EndpointSlice),
        Kind::IngressClass => typed(value).map(Resource::IngressClass),
        Kind::Ingress => typed(value).map(Resource::Ingress),
        Kind::GatewayClass => typed(value).map(Resource::GatewayClass),
        Kind::Gateway => typed(value).map(Resource::Gateway),
        Kind::HttpRoute => typed(value).map(Resource::HttpRoute),
        Kind::ReferenceGrant => typed(value).map(Resource::ReferenceGrant),
        Kind::HostRule => typed(value).map(Resource::HostRule),
        Kind::HttpRule => typed(value).map(Resource::HttpRule),
        Kind::TlsRoute => typed(value).map(Resource::TlsRoute),
        Kind::GrpcRoute => typed(value).map(Resource::GrpcRoute),
        Kind::BackendTlsPolicy => typed(value).map(Resource::BackendTlsPolicy),
        Kind::HealthMonitor => typed(value).map(Resource::HealthMonitor),
        Kind::BackendPolicy => typed(value).map(Resource::BackendPolicy),
        Kind::Certificate => typed(value).map(Resource::Certificate),
        Kind::Issuer => typed(value).map(Resource::Issuer),
        Kind::ClusterIssuer => typed(value).map(Resource::ClusterIssuer),
    };
    resource.map_or_else(fail, Decoded::Resource)
}

/// Decodes into a kind's type, shared, reporting the path of the field that did not fit.
fn typed<T: DeserializeOwned>(value: serde_json::Value) -> Result<Arc<T>, (String, String)> {
    serde_path_to_error::deserialize(value).map(Arc::new).map_err(field_error)
}

/// The path of the field that did not fit, and why.
fn field_error(error: serde_path_to_error::Error<serde_json::Error>) -> (String, String) {
    let path = error.path().to_string();
    let field = if path == "." { String::new() } else { path };
    (field, error.into_inner().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_keep_their_line_numbers() {
        let text = "a: 1\n---\n# c\nb: 2\n---\nc: 3\n";
        let docs = split_documents(text);
        assert_eq!(docs.iter().map(|d| d.line).collect::<Vec<_>>(), vec![1, 3, 6]);
        assert_eq!(docs[1].text, "# c\nb: 2\n");
    }

    #[test]
    fn wrong_type_names_file_line_resource_and_field() {
        let text = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: gw\nspec:\n  gatewayClassName: c\n  listeners:\n  - name: http\n    port: eighty\n    protocol: HTTP\n";
        let parsed = parse_manifests("gw.yaml", text, "default");
        assert!(parsed.resources.is_empty());
        let message = parsed.diagnostics[0].to_string();
        assert!(message.starts_with("gw.yaml:9: Gateway/default/gw: spec.listeners[0].port: "), "{message}");
    }

    #[test]
    fn merge_keys_are_expanded_and_the_mapping_own_keys_win() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels:\n    <<: {team: x, tier: web}\n    tier: api\n";
        let parsed = parse_manifests("ns.yaml", text, "default");
        assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
        let Resource::Namespace(ns) = &parsed.resources[0].0 else { panic!("not a namespace") };
        let labels = ns.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("team").map(String::as_str), Some("x"), "merged");
        assert_eq!(labels.get("tier").map(String::as_str), Some("api"), "own key wins");
    }

    #[test]
    fn repeated_keys_warn_and_last_wins() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels:\n    x: \"1\"\n    x: \"2\"\n";
        let parsed = parse_manifests("ns.yaml", text, "default");
        assert_eq!(parsed.resources.len(), 1);
        assert_eq!(parsed.diagnostics[0].severity, Severity::Warning);
        let Resource::Namespace(ns) = &parsed.resources[0].0 else { panic!("not a namespace") };
        assert_eq!(ns.metadata.labels.as_ref().and_then(|l| l.get("x")).map(String::as_str), Some("2"));
    }

    #[test]
    fn unknown_kinds_are_ignored_and_bad_documents_cost_only_themselves() {
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n---\nkey: [unclosed\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: ok\n";
        let parsed = parse_manifests("m.yaml", text, "default");
        assert_eq!(parsed.ignored, vec!["apps/v1 Deployment".to_string()]);
        assert_eq!(parsed.resources.len(), 1);
        assert!(parsed.diagnostics[0].to_string().starts_with("m.yaml:6: invalid YAML"), "{}", parsed.diagnostics[0]);
        // The parser's positions count from the document's start: the file's line replaces them.
        assert!(!parsed.diagnostics[0].message.contains("at line"), "{}", parsed.diagnostics[0]);
    }
}
