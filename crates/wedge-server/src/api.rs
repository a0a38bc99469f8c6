//! Request and response bodies: the OpenAI embeddings API and the KServe v2 / Triton JSON
//! inference protocol.

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use wedge_serve::{Embeddings, ServeError, ServedModel};

/// `POST /v1/embeddings`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OpenAiRequest {
    pub(crate) input: Value,
    #[serde(default)]
    pub(crate) model: Option<String>,
    #[serde(default)]
    pub(crate) encoding_format: Option<String>,
    #[serde(default)]
    pub(crate) dimensions: Option<u64>,
    #[serde(default)]
    #[allow(dead_code)] // accepted as OpenAI does; not used
    pub(crate) user: Option<String>,
}

/// The texts of an OpenAI `input`: a string or an array of strings. Token-id arrays are refused.
pub(crate) fn openai_inputs(input: Value) -> Result<Vec<String>, ServeError> {
    match input {
        Value::String(s) => Ok(vec![s]),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s),
                _ => Err(ServeError::BadInput(format!(
                    "input[{i}] is not a string (token-id inputs are not supported; send text)"
                ))),
            })
            .collect(),
        _ => Err(ServeError::BadInput("`input` must be a string or an array of strings".into())),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Float,
    Base64,
}

impl OpenAiRequest {
    pub(crate) fn encoding(&self) -> Result<Encoding, ServeError> {
        match self.encoding_format.as_deref() {
            None | Some("float") => Ok(Encoding::Float),
            Some("base64") => Ok(Encoding::Base64),
            Some(other) => Err(ServeError::BadInput(format!("encoding_format `{other}`: use float or base64"))),
        }
    }

    pub(crate) fn check_dimensions(&self, model: &ServedModel) -> Result<(), ServeError> {
        let dim = model.embedding()?.dim;
        match self.dimensions {
            Some(d) if d != dim as u64 => Err(ServeError::BadInput(format!(
                "dimensions {d}: model `{}` gives {dim}-dimensional embeddings",
                model.name
            ))),
            _ => Ok(()),
        }
    }
}

#[derive(Serialize)]
struct OpenAiItem<'a> {
    object: &'static str,
    index: usize,
    embedding: OpenAiVector<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum OpenAiVector<'a> {
    Float(&'a [f32]),
    Base64(String),
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

#[derive(Serialize)]
struct OpenAiResponse<'a> {
    object: &'static str,
    data: Vec<OpenAiItem<'a>>,
    model: &'a str,
    usage: Usage,
}

/// Little-endian f32 bytes in standard base64, as OpenAI's `encoding_format: base64`.
pub(crate) fn base64_f32(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub(crate) fn openai_response(out: &Embeddings, encoding: Encoding) -> Result<Vec<u8>, ServeError> {
    let data = out
        .vectors
        .iter()
        .enumerate()
        .map(|(index, v)| OpenAiItem {
            object: "embedding",
            index,
            embedding: match encoding {
                Encoding::Float => OpenAiVector::Float(v),
                Encoding::Base64 => OpenAiVector::Base64(base64_f32(v)),
            },
        })
        .collect();
    let body = OpenAiResponse {
        object: "list",
        data,
        model: &out.model.name,
        usage: Usage { prompt_tokens: out.prompt_tokens, total_tokens: out.prompt_tokens },
    };
    serde_json::to_vec(&body).map_err(|e| ServeError::Inference(e.to_string()))
}

/// `POST /v2/models/{name}/infer`.
#[derive(Debug, Deserialize)]
pub(crate) struct InferRequest {
    #[serde(default)]
    pub(crate) id: Option<String>,
    pub(crate) inputs: Vec<InferInput>,
    #[serde(default)]
    pub(crate) outputs: Option<Vec<RequestedOutput>>,
    #[serde(default)]
    pub(crate) parameters: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct InferInput {
    pub(crate) name: String,
    pub(crate) shape: Vec<i64>,
    pub(crate) datatype: String,
    /// JSON data; absent when the tensor's bytes follow the JSON (`binary_data_size`).
    #[serde(default)]
    pub(crate) data: Option<Value>,
    #[serde(default)]
    pub(crate) parameters: Option<Value>,
}

/// A KServe v2 infer request, read: its id, texts, and whether the answer's tensor goes as
/// binary data after the JSON.
#[derive(Debug, PartialEq)]
pub(crate) struct Infer {
    pub(crate) id: Option<String>,
    pub(crate) texts: Vec<String>,
    pub(crate) binary_output: bool,
}

/// A `parameters` field as a number or a flag.
fn param<'a>(p: &'a Option<Value>, name: &str) -> Option<&'a Value> {
    p.as_ref().and_then(|p| p.get(name))
}

/// The BYTES elements of a binary tensor: each a 4-byte little-endian length and its bytes.
pub(crate) fn binary_strings(mut raw: &[u8]) -> Result<Vec<String>, ServeError> {
    let bad = |m: &str| ServeError::BadInput(format!("input `{INPUT_NAME}`: binary BYTES data {m}"));
    let mut out = Vec::new();
    while !raw.is_empty() {
        let (len, rest) = raw.split_first_chunk::<4>().ok_or_else(|| bad("ends inside an element's length"))?;
        let len = u32::from_le_bytes(*len) as usize;
        if len > rest.len() {
            return Err(bad("ends inside an element"));
        }
        let (text, rest) = rest.split_at(len);
        out.push(String::from_utf8(text.to_vec()).map_err(|_| bad("holds an element that is not UTF-8"))?);
        raw = rest;
    }
    Ok(out)
}

impl Infer {
    /// Reads a request body: JSON, or with the binary tensor data extension
    /// (`Inference-Header-Content-Length: header_len`) that much JSON followed by the inputs'
    /// bytes, in input order, each input saying its size in `parameters.binary_data_size`.
    pub(crate) fn parse(body: &[u8], header_len: Option<usize>) -> Result<Infer, ServeError> {
        let bad = |m: String| ServeError::BadInput(m);
        let (head, mut binary) = match header_len {
            None => (body, &body[..0]),
            Some(n) if n <= body.len() => body.split_at(n),
            Some(n) => {
                return Err(bad(format!(
                    "Inference-Header-Content-Length is {n} but the body has {} bytes",
                    body.len()
                )));
            }
        };
        let mut r: InferRequest = serde_json::from_slice(head).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        for input in &mut r.inputs {
            let Some(size) = param(&input.parameters, "binary_data_size") else { continue };
            let size = size
                .as_u64()
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| bad(format!("input `{}`: binary_data_size must be a byte count", input.name)))?;
            if size > binary.len() {
                return Err(bad(format!(
                    "input `{}`: binary_data_size {size} is more than the {} bytes after the JSON",
                    input.name,
                    binary.len()
                )));
            }
            if input.data.is_some() {
                return Err(bad(format!("input `{}` has both data and binary_data_size", input.name)));
            }
            let (raw, rest) = binary.split_at(size);
            binary = rest;
            if input.datatype == "BYTES" && input.name == INPUT_NAME {
                input.data = Some(Value::from(binary_strings(raw)?));
            } else {
                // (checked and refused by name and datatype below)
                input.data = Some(Value::Null);
            }
        }
        if !binary.is_empty() {
            return Err(bad(format!("{} bytes after the JSON belong to no input", binary.len())));
        }
        let requested =
            r.outputs.iter().flatten().any(|o| param(&o.parameters, "binary_data") == Some(&Value::Bool(true)));
        let binary_output = requested || param(&r.parameters, "binary_data_output") == Some(&Value::Bool(true));
        let (id, texts) = r.texts()?;
        Ok(Infer { id, texts, binary_output })
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct RequestedOutput {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) parameters: Option<Value>,
}

pub(crate) const INPUT_NAME: &str = "text";
pub(crate) const OUTPUT_NAME: &str = "embedding";

fn flatten_strings(v: Value, out: &mut Vec<String>) -> Result<(), ServeError> {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(a) => {
            for x in a {
                flatten_strings(x, out)?;
            }
        }
        _ => return Err(ServeError::BadInput(format!("input `{INPUT_NAME}`: BYTES data must be strings"))),
    }
    Ok(())
}

impl InferRequest {
    /// The texts, after checking names, datatype, shape and requested outputs.
    pub(crate) fn texts(self) -> Result<(Option<String>, Vec<String>), ServeError> {
        let bad = |m: String| Err(ServeError::BadInput(m));
        if let Some(outs) = &self.outputs {
            for o in outs {
                if o.name != OUTPUT_NAME {
                    return bad(format!("unknown output `{}`; this model has `{OUTPUT_NAME}`", o.name));
                }
            }
        }
        let [input]: [InferInput; 1] = match self.inputs.try_into() {
            Ok(one) => one,
            Err(v) => return bad(format!("expected one input `{INPUT_NAME}`, got {}", v.len())),
        };
        if input.name != INPUT_NAME {
            return bad(format!("unknown input `{}`; this model takes `{INPUT_NAME}`", input.name));
        }
        if input.datatype != "BYTES" {
            return bad(format!("input `{INPUT_NAME}` has datatype {}; expected BYTES", input.datatype));
        }
        let mut texts = Vec::new();
        let data = input.data.ok_or_else(|| ServeError::BadInput(format!("input `{INPUT_NAME}` has no data")))?;
        flatten_strings(data, &mut texts)?;
        let elements = input.shape.iter().try_fold(1i64, |acc, &d| if d < 0 { None } else { acc.checked_mul(d) });
        let shape_ok = matches!(input.shape.len(), 1 | 2)
            && (input.shape.len() == 1 || input.shape[1] == 1)
            && elements == Some(texts.len() as i64);
        if !shape_ok {
            return bad(format!(
                "input `{INPUT_NAME}` has shape {:?} but {} strings; expected [N] or [N, 1]",
                input.shape,
                texts.len()
            ));
        }
        Ok((self.id, texts))
    }
}

#[derive(Serialize)]
struct InferOutput {
    name: &'static str,
    datatype: &'static str,
    shape: [usize; 2],
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Vec<f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
}

#[derive(Serialize)]
struct InferResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    outputs: [InferOutput; 1],
}

/// The answer to an infer request: JSON, or with `binary` the JSON (its length returned, for
/// `Inference-Header-Content-Length`) followed by the output's little-endian FP32 bytes.
pub(crate) fn infer_response(
    out: &Embeddings,
    id: Option<String>,
    binary: bool,
) -> Result<(Vec<u8>, Option<usize>), ServeError> {
    let dim = out.model.embedding()?.dim;
    let mut data = Vec::with_capacity(out.vectors.len() * dim);
    for v in &out.vectors {
        data.extend_from_slice(v);
    }
    let shape = [out.vectors.len(), dim];
    let output = if binary {
        let size = 4 * data.len();
        InferOutput {
            name: OUTPUT_NAME,
            datatype: "FP32",
            shape,
            data: None,
            parameters: Some(serde_json::json!({ "binary_data_size": size })),
        }
    } else {
        InferOutput {
            name: OUTPUT_NAME,
            datatype: "FP32",
            shape,
            data: Some(std::mem::take(&mut data)),
            parameters: None,
        }
    };
    let body = InferResponse { model_name: &out.model.name, model_version: &out.model.version, id, outputs: [output] };
    let mut bytes = serde_json::to_vec(&body).map_err(|e| ServeError::Inference(e.to_string()))?;
    if !binary {
        return Ok((bytes, None));
    }
    let header_len = bytes.len();
    bytes.reserve(4 * data.len());
    for x in &data {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    Ok((bytes, Some(header_len)))
}

/// `GET /v2/models/{name}`.
pub(crate) fn model_metadata(m: &ServedModel) -> Value {
    let (inputs, outputs) = model_tensors(m);
    serde_json::json!({
        "name": m.name,
        "versions": [m.version],
        "platform": "wedge",
        "task": m.task(),
        "inputs": inputs,
        "outputs": outputs,
    })
}

/// A tensor a model takes or gives, as its metadata describes it (-1: any size).
#[derive(Debug, Serialize)]
pub(crate) struct TensorSpec {
    pub(crate) name: &'static str,
    pub(crate) datatype: &'static str,
    pub(crate) shape: Vec<i64>,
}

/// The inputs and outputs of `m` in KServe v2 terms: an embedding model takes BYTES `text`
/// [N] and gives FP32 `embedding` [N, dim]. A language model lists no tensors: it is served
/// through the OpenAI routes.
pub(crate) fn model_tensors(m: &ServedModel) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
    match m.embedding() {
        Ok(e) => (
            vec![TensorSpec { name: INPUT_NAME, datatype: "BYTES", shape: vec![-1] }],
            vec![TensorSpec { name: OUTPUT_NAME, datatype: "FP32", shape: vec![-1, e.dim as i64] }],
        ),
        Err(_) => (Vec::new(), Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn infer(v: Value) -> Result<(Option<String>, Vec<String>), ServeError> {
        let i = Infer::parse(v.to_string().as_bytes(), None)?;
        Ok((i.id, i.texts))
    }

    #[test]
    fn kserve_inputs_are_checked() {
        let ok = serde_json::json!({"id": "7", "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]});
        assert_eq!(infer(ok).unwrap(), (Some("7".into()), vec!["a".into(), "b".into()]));
        let nested = serde_json::json!({"inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [["a"], ["b"]]}]});
        assert_eq!(infer(nested).unwrap().1.len(), 2);
        for bad in [
            serde_json::json!({"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a", "b"]}]}),
            serde_json::json!({"inputs": [{"name": "text", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}),
            serde_json::json!({"inputs": [{"name": "txt", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}),
            serde_json::json!({"inputs": []}),
            serde_json::json!({"inputs": [{"name": "text", "shape": [-1], "datatype": "BYTES", "data": ["a"]}]}),
            serde_json::json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}], "outputs": [{"name": "logits"}]}),
        ] {
            assert!(infer(bad.clone()).is_err(), "{bad}");
        }
    }

    /// A body as Triton's clients send it: JSON, then each BYTES element as a 4-byte length
    /// and its bytes.
    fn binary_body(texts: &[&str], extra: &[u8], output: Value) -> (Vec<u8>, usize) {
        let mut raw = Vec::new();
        for t in texts {
            raw.extend_from_slice(&(t.len() as u32).to_le_bytes());
            raw.extend_from_slice(t.as_bytes());
        }
        let head = serde_json::json!({
            "inputs": [{"name": "text", "shape": [texts.len()], "datatype": "BYTES",
                        "parameters": {"binary_data_size": raw.len()}}],
            "parameters": output,
        })
        .to_string();
        let n = head.len();
        ([head.into_bytes(), raw, extra.to_vec()].concat(), n)
    }

    #[test]
    fn binary_tensor_data_is_read_and_checked() {
        let (body, n) = binary_body(&["héllo", "", "two"], b"", serde_json::json!({"binary_data_output": true}));
        let got = Infer::parse(&body, Some(n)).unwrap();
        assert_eq!(got.texts, ["héllo", "", "two"]);
        assert!(got.binary_output);
        let (body, n) = binary_body(&["a"], b"", serde_json::json!({}));
        assert!(!Infer::parse(&body, Some(n)).unwrap().binary_output);
        let refused = |body: &[u8], n: Option<usize>, why: &str| {
            let e = Infer::parse(body, n).unwrap_err().to_string();
            assert!(e.contains(why), "{e} (wanted {why})");
        };
        let (body, n) = binary_body(&["a", "b"], b"zz", serde_json::json!({}));
        refused(&body, Some(n), "belong to no input");
        refused(&body, Some(body.len() + 1), "Inference-Header-Content-Length");
        refused(&body[..body.len() - 3], Some(n), "binary_data_size");
        refused(&body, None, "invalid JSON");
        let (mut body, n) = binary_body(&["ab"], b"", serde_json::json!({}));
        let len = body.len();
        body[len - 1] = 0xff; // not UTF-8
        refused(&body, Some(n), "not UTF-8");
        body[n] = 9; // a length past the end
        refused(&body, Some(n), "ends inside an element");
    }

    #[test]
    fn openai_inputs_and_base64() {
        assert_eq!(openai_inputs(serde_json::json!("x")).unwrap(), vec!["x".to_string()]);
        assert!(openai_inputs(serde_json::json!([[1, 2]])).is_err());
        assert!(openai_inputs(serde_json::json!(3)).is_err());
        let b = base64_f32(&[1.0, -2.0]);
        let bytes = base64::engine::general_purpose::STANDARD.decode(b).unwrap();
        assert_eq!(bytes, [1.0f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat());
    }
}
