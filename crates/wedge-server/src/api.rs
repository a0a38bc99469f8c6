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
    #[allow(dead_code)] // accepted per the protocol; none are used
    pub(crate) parameters: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct InferInput {
    pub(crate) name: String,
    pub(crate) shape: Vec<i64>,
    pub(crate) datatype: String,
    pub(crate) data: Value,
    #[serde(default)]
    #[allow(dead_code)]
    pub(crate) parameters: Option<Value>,
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
                let binary = o.parameters.as_ref().and_then(|p| p.get("binary_data")).and_then(Value::as_bool);
                if binary == Some(true) {
                    return bad("binary_data outputs are not supported; use JSON".into());
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
        flatten_strings(input.data, &mut texts)?;
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
    data: Vec<f32>,
}

#[derive(Serialize)]
struct InferResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    outputs: [InferOutput; 1],
}

pub(crate) fn infer_response(out: &Embeddings, id: Option<String>) -> Result<Vec<u8>, ServeError> {
    let dim = out.model.embedding()?.dim;
    let mut data = Vec::with_capacity(out.vectors.len() * dim);
    for v in &out.vectors {
        data.extend_from_slice(v);
    }
    let body = InferResponse {
        model_name: &out.model.name,
        model_version: &out.model.version,
        id,
        outputs: [InferOutput { name: OUTPUT_NAME, datatype: "FP32", shape: [out.vectors.len(), dim], data }],
    };
    serde_json::to_vec(&body).map_err(|e| ServeError::Inference(e.to_string()))
}

/// `GET /v2/models/{name}`. A language model lists no tensors: it is served through the
/// OpenAI routes.
pub(crate) fn model_metadata(m: &ServedModel) -> Value {
    let (inputs, outputs) = match m.embedding() {
        Ok(e) => (
            serde_json::json!([{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}]),
            serde_json::json!([{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, e.dim]}]),
        ),
        Err(_) => (serde_json::json!([]), serde_json::json!([])),
    };
    serde_json::json!({
        "name": m.name,
        "versions": [m.version],
        "platform": "wedge",
        "task": m.task(),
        "inputs": inputs,
        "outputs": outputs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn infer(v: Value) -> Result<(Option<String>, Vec<String>), ServeError> {
        serde_json::from_value::<InferRequest>(v).map_err(|e| ServeError::BadInput(e.to_string()))?.texts()
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
