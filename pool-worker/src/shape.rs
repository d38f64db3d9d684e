//! The JSON a person types for a job's argument, worked out from its `Deserialize`.
//!
//! `procpool jobs` shows each job's input as JSON (`{"path": string, "iterations"?:
//! int}`), not as a Rust type name. The worker traces the type's `Deserialize` with a
//! deserializer that answers each request with a placeholder and writes down what was
//! asked for: a struct's fields, a sequence's element, an enum's variant. One pass
//! sees one variant of each enum, so there is a pass per other variant; and a struct
//! field that may be left out is told by a pass that leaves it out. The shapes follow
//! serde_json's mapping (a tuple is an array, an enum is externally tagged).
//!
//! A type that cannot be traced this way (it asks for `deserialize_any`, as untagged
//! enums and `#[serde(flatten)]` do, or it rejects the placeholders, as a type parsed
//! from a string may) has no shape: the caller shows its Rust type name instead.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

/// Deepest nesting traced: past it an option is `None` and a sequence or map empty,
/// and a type that still goes deeper (a required field of its own type) is given up.
const DEPTH: usize = 12;
const MAX_DEPTH: usize = 48;
/// Passes per type at most (one per enum variant and one per struct field).
const MAX_PASSES: usize = 256;
/// Deserializer calls per pass at most.
const MAX_STEPS: usize = 4096;

/// What a traced type is, at one path (`""` the root, `.field`, `[]` an element, ...).
#[derive(Clone, Debug, PartialEq)]
enum Node {
    Bool,
    Int,
    Float,
    Str,
    Bytes,
    Null,
    Any,
    /// Its value at `path?`.
    Option,
    /// Its value at `path()`.
    Newtype,
    /// Its element at `path[]`.
    Seq,
    /// Its elements at `path.0`, `path.1`, ...
    Tuple(usize),
    /// Its values at `path{}` (JSON keys are strings).
    Map,
    /// Its fields at `path.name`.
    Struct {
        name: &'static str,
        fields: &'static [&'static str],
    },
    /// Each variant at `path::Variant`.
    Enum {
        variants: &'static [&'static str],
    },
    /// A variant: its content as for a struct, a tuple, or a newtype at `path()`.
    UnitVariant,
    NewtypeVariant,
    TupleVariant(usize),
    StructVariant {
        fields: &'static [&'static str],
    },
}

/// The traced shape of one type.
pub(crate) struct Shape {
    nodes: HashMap<String, Node>,
    /// Struct fields that may be left out: (struct path, field).
    optional: HashSet<(String, &'static str)>,
}

/// The JSON shape of `T`, or `None` if `T` does not let itself be traced.
pub(crate) fn trace<T: DeserializeOwned>() -> Option<Shape> {
    let mut shape = Shape {
        nodes: HashMap::new(),
        optional: HashSet::new(),
    };
    let mut queue = VecDeque::from([HashMap::new()]);
    let mut enums_seen = HashSet::new();
    let mut structs_seen = HashSet::new();
    let mut passes = 0;
    let mut first = true;
    while let Some(choices) = queue.pop_front() {
        passes += 1;
        if passes > MAX_PASSES {
            break;
        }
        let mut pass = Pass::new(&choices, None);
        let traced = T::deserialize(Tracer::root(&mut pass));
        if first && traced.is_err() {
            return None;
        }
        first = false;
        // A failed pass still says what it saw before it failed.
        for (path, node) in pass.nodes.drain() {
            shape.nodes.entry(path).or_insert(node);
        }
        for (path, variants) in std::mem::take(&mut pass.enums) {
            if enums_seen.insert(path.clone()) {
                for chosen in 1..variants {
                    let mut next = choices.clone();
                    next.insert(path.clone(), chosen);
                    queue.push_back(next);
                }
            }
        }
        if traced.is_err() {
            continue;
        }
        for (path, fields) in std::mem::take(&mut pass.structs) {
            if !structs_seen.insert(path.clone()) {
                continue;
            }
            for &field in fields {
                passes += 1;
                if passes > MAX_PASSES {
                    break;
                }
                let mut probe = Pass::new(&choices, Some((&path, field)));
                if T::deserialize(Tracer::root(&mut probe)).is_ok() {
                    shape.optional.insert((path.clone(), field));
                }
            }
        }
    }
    Some(shape)
}

impl Shape {
    /// The whole shape: `{"path": string, "iterations"?: int}`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, "", &mut Vec::new());
        out
    }

    /// The shape of a job's argument, with the function's argument `names` beside the
    /// values they name: `int (ms)`, `[int (a), int (b)]`. A struct shows its fields.
    pub fn render_arguments(&self, names: &[&str]) -> String {
        match (names, self.nodes.get("")) {
            ([name], _) => {
                let shape = self.render();
                if shape.starts_with('{') {
                    shape
                } else {
                    format!("{shape} ({name})")
                }
            }
            (names, Some(Node::Tuple(n))) if names.len() == *n && *n > 1 => {
                let items: Vec<String> = names
                    .iter()
                    .enumerate()
                    .map(|(i, name)| {
                        let mut item = String::new();
                        self.write(&mut item, &format!(".{i}"), &mut Vec::new());
                        format!("{item} ({name})")
                    })
                    .collect();
                format!("[{}]", items.join(", "))
            }
            _ => self.render(),
        }
    }

    fn write(&self, out: &mut String, path: &str, within: &mut Vec<&'static str>) {
        if within.len() > DEPTH {
            out.push_str("...");
            return;
        }
        let Some(node) = self.nodes.get(path) else {
            out.push_str("any");
            return;
        };
        match node {
            Node::Bool => out.push_str("bool"),
            Node::Int => out.push_str("int"),
            Node::Float => out.push_str("number"),
            Node::Str => out.push_str("string"),
            Node::Bytes => out.push_str("[int, ...]"),
            Node::Null => out.push_str("null"),
            Node::Any | Node::UnitVariant => out.push_str("any"),
            Node::Option => {
                let mut inner = String::new();
                self.write(&mut inner, &format!("{path}?"), within);
                out.push_str(&inner);
                if inner != "null" && !inner.ends_with("| null") {
                    out.push_str(" | null");
                }
            }
            Node::Newtype | Node::NewtypeVariant => {
                self.write(out, &format!("{path}()"), within);
            }
            Node::Seq => {
                out.push('[');
                self.write(out, &format!("{path}[]"), within);
                out.push_str(", ...]");
            }
            Node::Tuple(n) | Node::TupleVariant(n) => {
                out.push('[');
                for i in 0..*n {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    self.write(out, &format!("{path}.{i}"), within);
                }
                out.push(']');
            }
            Node::Map => {
                out.push_str("{string: ");
                self.write(out, &format!("{path}{{}}"), within);
                out.push('}');
            }
            Node::Struct { name, fields } => {
                if within.contains(name) {
                    // A type that contains itself: its name stands for it the second time.
                    out.push_str(name);
                    return;
                }
                within.push(name);
                self.write_fields(out, path, fields, within);
                within.pop();
            }
            Node::StructVariant { fields } => self.write_fields(out, path, fields, within),
            Node::Enum { variants } => {
                for (i, variant) in variants.iter().enumerate() {
                    if i > 0 {
                        out.push_str(" | ");
                    }
                    let at = format!("{path}::{variant}");
                    match self.nodes.get(&at) {
                        Some(Node::UnitVariant) => out.push_str(&format!("\"{variant}\"")),
                        _ => {
                            out.push_str(&format!("{{\"{variant}\": "));
                            self.write(out, &at, within);
                            out.push('}');
                        }
                    }
                }
            }
        }
    }

    fn write_fields(
        &self,
        out: &mut String,
        path: &str,
        fields: &[&'static str],
        within: &mut Vec<&'static str>,
    ) {
        out.push('{');
        for (i, field) in fields.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let optional = self.optional.contains(&(path.to_owned(), *field));
            out.push_str(&format!("\"{field}\"{}: ", if optional { "?" } else { "" }));
            self.write(out, &format!("{path}.{field}"), within);
        }
        out.push('}');
    }
}

/// One pass over a type: which variant each enum takes, which field is left out, and
/// what was seen.
struct Pass<'c> {
    choices: &'c HashMap<String, usize>,
    omit: Option<(&'c str, &'static str)>,
    nodes: HashMap<String, Node>,
    enums: Vec<(String, usize)>,
    structs: Vec<(String, &'static [&'static str])>,
    steps: usize,
}

impl<'c> Pass<'c> {
    fn new(choices: &'c HashMap<String, usize>, omit: Option<(&'c str, &'static str)>) -> Self {
        Pass {
            choices,
            omit,
            nodes: HashMap::new(),
            enums: Vec::new(),
            structs: Vec::new(),
            steps: 0,
        }
    }
}

#[derive(Debug)]
struct TraceError(String);

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TraceError {}

impl de::Error for TraceError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        TraceError(msg.to_string())
    }
}

/// The deserializer of one pass, at one path.
struct Tracer<'a, 'c> {
    pass: &'a mut Pass<'c>,
    path: String,
    depth: usize,
}

impl<'a, 'c> Tracer<'a, 'c> {
    fn root(pass: &'a mut Pass<'c>) -> Self {
        Tracer {
            pass,
            path: String::new(),
            depth: 0,
        }
    }

    /// Writes down what is at this path; refuses to go on past the bounds.
    fn see(&mut self, node: Node) -> Result<(), TraceError> {
        self.pass.steps += 1;
        if self.pass.steps > MAX_STEPS || self.depth > MAX_DEPTH {
            return Err(TraceError(
                "the type is too large or too deep to trace".into(),
            ));
        }
        self.pass.nodes.entry(self.path.clone()).or_insert(node);
        Ok(())
    }

    fn child<'b>(&'b mut self, suffix: &str) -> Tracer<'b, 'c> {
        Tracer {
            path: format!("{}{suffix}", self.path),
            depth: self.depth + 1,
            pass: self.pass,
        }
    }

    /// Whether an option, sequence or map here is traced into (not too deep).
    fn goes_deeper(&self) -> bool {
        self.depth < DEPTH
    }
}

macro_rules! placeholder {
    ($($method:ident => $node:expr, $visit:ident($($value:expr)?);)*) => {
        $(
            fn $method<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, TraceError> {
                self.see($node)?;
                visitor.$visit($($value)?)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for Tracer<'_, '_> {
    type Error = TraceError;

    // Integers are 1 so that non-zero types accept them.
    placeholder! {
        deserialize_bool => Node::Bool, visit_bool(false);
        deserialize_i8 => Node::Int, visit_i64(1);
        deserialize_i16 => Node::Int, visit_i64(1);
        deserialize_i32 => Node::Int, visit_i64(1);
        deserialize_i64 => Node::Int, visit_i64(1);
        deserialize_i128 => Node::Int, visit_i128(1);
        deserialize_u8 => Node::Int, visit_u64(1);
        deserialize_u16 => Node::Int, visit_u64(1);
        deserialize_u32 => Node::Int, visit_u64(1);
        deserialize_u64 => Node::Int, visit_u64(1);
        deserialize_u128 => Node::Int, visit_u128(1);
        deserialize_f32 => Node::Float, visit_f64(1.0);
        deserialize_f64 => Node::Float, visit_f64(1.0);
        deserialize_char => Node::Str, visit_char('a');
        deserialize_str => Node::Str, visit_str("");
        deserialize_string => Node::Str, visit_str("");
        deserialize_identifier => Node::Str, visit_str("");
        deserialize_bytes => Node::Bytes, visit_bytes(&[]);
        deserialize_byte_buf => Node::Bytes, visit_bytes(&[]);
        deserialize_unit => Node::Null, visit_unit();
        deserialize_any => Node::Any, visit_unit();
        deserialize_ignored_any => Node::Any, visit_unit();
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.see(Node::Null)?;
        visitor.visit_unit()
    }

    fn deserialize_option<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, TraceError> {
        self.see(Node::Option)?;
        if self.goes_deeper() {
            visitor.visit_some(self.child("?"))
        } else {
            visitor.visit_none()
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.see(Node::Newtype)?;
        visitor.visit_newtype_struct(self.child("()"))
    }

    fn deserialize_seq<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, TraceError> {
        self.see(Node::Seq)?;
        let count = usize::from(self.goes_deeper());
        visitor.visit_seq(Elements {
            tracer: self,
            suffixes: vec!["[]".to_owned(); count],
            next: 0,
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        mut self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.see(Node::Tuple(len))?;
        visitor.visit_seq(Elements::numbered(self, len))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, TraceError> {
        self.see(Node::Map)?;
        let entries = usize::from(self.goes_deeper());
        visitor.visit_map(Entries {
            tracer: self,
            entries,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        mut self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.see(Node::Struct { name, fields })?;
        self.pass.structs.push((self.path.clone(), fields));
        visitor.visit_map(Fields::new(self, fields))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.see(Node::Enum { variants })?;
        self.pass.enums.push((self.path.clone(), variants.len()));
        let chosen = self.pass.choices.get(&self.path).copied().unwrap_or(0);
        let variant = *variants
            .get(chosen)
            .ok_or_else(|| TraceError("an enum without variants".into()))?;
        visitor.visit_enum(Variant {
            tracer: self,
            variant,
        })
    }

    fn is_human_readable(&self) -> bool {
        // Like serde_json: addresses, times and the like come as strings.
        true
    }
}

/// The elements of a sequence (one placeholder) or a tuple (each traced).
struct Elements<'a, 'c> {
    tracer: Tracer<'a, 'c>,
    suffixes: Vec<String>,
    next: usize,
}

impl<'a, 'c> Elements<'a, 'c> {
    fn numbered(tracer: Tracer<'a, 'c>, len: usize) -> Self {
        Elements {
            tracer,
            suffixes: (0..len).map(|i| format!(".{i}")).collect(),
            next: 0,
        }
    }
}

impl<'de> SeqAccess<'de> for Elements<'_, '_> {
    type Error = TraceError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, TraceError> {
        let Some(suffix) = self.suffixes.get(self.next) else {
            return Ok(None);
        };
        self.next += 1;
        let suffix = suffix.clone();
        seed.deserialize(self.tracer.child(&suffix)).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.suffixes.len() - self.next)
    }
}

/// The entries of a map: one placeholder.
struct Entries<'a, 'c> {
    tracer: Tracer<'a, 'c>,
    entries: usize,
}

impl<'de> MapAccess<'de> for Entries<'_, '_> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, TraceError> {
        if self.entries == 0 {
            return Ok(None);
        }
        self.entries -= 1;
        seed.deserialize(self.tracer.child("<key>")).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, TraceError> {
        seed.deserialize(self.tracer.child("{}"))
    }
}

/// A struct's fields, by name, in order (less the one a probe leaves out).
struct Fields<'a, 'c> {
    tracer: Tracer<'a, 'c>,
    fields: Vec<&'static str>,
    next: usize,
}

impl<'a, 'c> Fields<'a, 'c> {
    fn new(tracer: Tracer<'a, 'c>, fields: &'static [&'static str]) -> Self {
        let omit = tracer
            .pass
            .omit
            .filter(|(path, _)| *path == tracer.path)
            .map(|(_, field)| field);
        Fields {
            fields: fields
                .iter()
                .copied()
                .filter(|f| Some(*f) != omit)
                .collect(),
            tracer,
            next: 0,
        }
    }
}

impl<'de> MapAccess<'de> for Fields<'_, '_> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, TraceError> {
        let Some(field) = self.fields.get(self.next) else {
            return Ok(None);
        };
        let key: de::value::StrDeserializer<'_, TraceError> = field.into_deserializer();
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, TraceError> {
        let field = self
            .fields
            .get(self.next)
            .ok_or_else(|| TraceError("a value without a key".into()))?;
        self.next += 1;
        let suffix = format!(".{field}");
        seed.deserialize(self.tracer.child(&suffix))
    }
}

/// The variant a pass takes of an enum.
struct Variant<'a, 'c> {
    tracer: Tracer<'a, 'c>,
    variant: &'static str,
}

impl<'a, 'c, 'de> EnumAccess<'de> for Variant<'a, 'c> {
    type Error = TraceError;
    type Variant = Tracer<'a, 'c>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Tracer<'a, 'c>), TraceError> {
        let key: de::value::StrDeserializer<'_, TraceError> = self.variant.into_deserializer();
        let value = seed.deserialize(key)?;
        let Tracer { pass, path, depth } = self.tracer;
        let tracer = Tracer {
            pass,
            path: format!("{path}::{}", self.variant),
            depth: depth + 1,
        };
        Ok((value, tracer))
    }
}

impl<'de> VariantAccess<'de> for Tracer<'_, '_> {
    type Error = TraceError;

    fn unit_variant(mut self) -> Result<(), TraceError> {
        self.see(Node::UnitVariant)
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        mut self,
        seed: T,
    ) -> Result<T::Value, TraceError> {
        self.see(Node::NewtypeVariant)?;
        seed.deserialize(self.child("()"))
    }

    fn tuple_variant<V: Visitor<'de>>(
        mut self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.see(Node::TupleVariant(len))?;
        visitor.visit_seq(Elements::numbered(self, len))
    }

    fn struct_variant<V: Visitor<'de>>(
        mut self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.see(Node::StructVariant { fields })?;
        self.pass.structs.push((self.path.clone(), fields));
        visitor.visit_map(Fields::new(self, fields))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    fn shape<T: DeserializeOwned>() -> String {
        trace::<T>().expect("traceable").render()
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct HashFile {
        path: String,
        #[serde(default)]
        salt: String,
        #[serde(default)]
        iterations: u32,
        note: Option<String>,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Mode {
        Fast,
        Slow(u64),
        Pair(u8, bool),
        Named {
            depth: u32,
            #[serde(default)]
            tags: Vec<String>,
        },
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Tree {
        label: String,
        children: Vec<Tree>,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    #[serde(untagged)]
    enum Untagged {
        A(u64),
        B(String),
    }

    #[test]
    fn scalars_sequences_and_maps_are_json_types() {
        assert_eq!(shape::<u64>(), "int");
        assert_eq!(shape::<i8>(), "int");
        assert_eq!(shape::<f64>(), "number");
        assert_eq!(shape::<bool>(), "bool");
        assert_eq!(shape::<String>(), "string");
        assert_eq!(shape::<std::path::PathBuf>(), "string");
        assert_eq!(shape::<()>(), "null");
        assert_eq!(shape::<Option<u32>>(), "int | null");
        assert_eq!(shape::<Vec<String>>(), "[string, ...]");
        assert_eq!(shape::<(u64, String)>(), "[int, string]");
        assert_eq!(shape::<BTreeMap<String, f32>>(), "{string: number}");
        assert_eq!(shape::<std::num::NonZeroU32>(), "int");
        assert_eq!(shape::<Box<u8>>(), "int");
    }

    #[test]
    fn struct_fields_that_may_be_left_out_are_marked() {
        assert_eq!(
            shape::<HashFile>(),
            r#"{"path": string, "salt"?: string, "iterations"?: int, "note"?: string | null}"#
        );
    }

    #[test]
    fn every_variant_of_an_enum_is_shown_externally_tagged() {
        assert_eq!(
            shape::<Mode>(),
            r#""Fast" | {"Slow": int} | {"Pair": [int, bool]} | {"Named": {"depth": int, "tags"?: [string, ...]}}"#
        );
        assert_eq!(
            shape::<Vec<Option<Mode>>>().matches("Named").count(),
            1,
            "variants inside containers are explored too"
        );
    }

    #[test]
    fn a_type_that_contains_itself_is_named_the_second_time() {
        assert_eq!(
            shape::<Tree>(),
            r#"{"label": string, "children": [Tree, ...]}"#
        );
    }

    #[test]
    fn a_type_that_needs_deserialize_any_has_no_shape() {
        // An untagged enum buffers whatever it is given; a placeholder matches no variant.
        assert!(trace::<Untagged>().is_none());
        assert!(
            trace::<std::net::IpAddr>().is_none(),
            "rejects the placeholder"
        );
    }

    #[test]
    fn argument_names_stand_beside_their_values() {
        let one = trace::<u64>().unwrap();
        assert_eq!(one.render_arguments(&["ms"]), "int (ms)");
        let two = trace::<(i64, String)>().unwrap();
        assert_eq!(two.render_arguments(&["a", "b"]), "[int (a), string (b)]");
        let spec = trace::<HashFile>().unwrap();
        assert!(spec.render_arguments(&["spec"]).starts_with("{\"path\""));
    }
}
