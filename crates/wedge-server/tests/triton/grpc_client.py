"""Triton's own gRPC client (tritonclient, from PyPI) against a live wedge server, its answers
checked against Triton's HTTP client on the same server.

Usage: python grpc_client.py GRPC_HOST:PORT HTTP_HOST:PORT MODEL
Exits non-zero (with the reason) when anything differs from what a Triton user expects.
"""
import sys

import numpy as np
import tritonclient.grpc as grpc
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

grpc_url, http_url, model = sys.argv[1], sys.argv[2], sys.argv[3]
c = grpc.InferenceServerClient(grpc_url)
assert c.is_server_live() and c.is_server_ready(), "server not live and ready"
assert c.is_model_ready(model), "model not ready"
assert c.get_server_metadata().name == "wedge"
meta = c.get_model_metadata(model)
assert meta.inputs[0].name == "text" and meta.inputs[0].datatype == "BYTES", meta
assert meta.outputs[0].datatype == "FP32" and list(meta.outputs[0].shape) == [-1, 384], meta

texts = np.array([["hello world"], ["edge inference"], ["ünïcödé"]], dtype=object)
text = grpc.InferInput("text", [3, 1], "BYTES")
text.set_data_from_numpy(texts)  # as raw_input_contents, the client's only way
out = c.infer(model, [text], request_id="g1", outputs=[grpc.InferRequestedOutput("embedding")])
e = out.as_numpy("embedding")
assert e.shape == (3, 384) and e.dtype == np.float32, (e.shape, e.dtype)
assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-4), np.linalg.norm(e, axis=1)
assert out.get_response().id == "g1", out.get_response()

h = http.InferenceServerClient(http_url)
over_http = http.InferInput("text", [3, 1], "BYTES")
over_http.set_data_from_numpy(texts)
assert np.array_equal(h.infer(model, [over_http]).as_numpy("embedding"), e), "gRPC and HTTP differ"

for algorithm in ["gzip", "deflate"]:
    z = c.infer(model, [text], compression_algorithm=algorithm)
    assert np.array_equal(z.as_numpy("embedding"), e), f"{algorithm} differs"

for call, code, words in [
    (lambda: c.infer("no-such-model", [text]), "NOT_FOUND", "no-such-model"),
    (lambda: c.infer(model, [grpc.InferInput("txt", [1], "BYTES")]), "INVALID_ARGUMENT", "txt"),
    (lambda: c.is_model_ready("no-such-model"), "NOT_FOUND", "no-such-model"),
]:
    try:
        call()
        sys.exit(f"no error where {code} was expected")
    except InferenceServerException as ex:
        assert code in str(ex.status()) and words in ex.message(), (ex.status(), ex.message())
print("tritonclient grpc: ok", e[0, :3])
