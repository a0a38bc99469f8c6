"""Triton's own HTTP client (tritonclient, from PyPI) against a live wedge server.

Usage: python http_client.py HOST:PORT MODEL
Exits non-zero (with the reason) when anything differs from what a Triton user expects.
"""
import sys

import numpy as np
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

url, model = sys.argv[1], sys.argv[2]
c = http.InferenceServerClient(url)
assert c.is_server_live() and c.is_server_ready(), "server not live and ready"
assert c.is_model_ready(model), "model not ready"
meta = c.get_model_metadata(model)
assert meta["inputs"][0]["name"] == "text" and meta["inputs"][0]["datatype"] == "BYTES", meta
assert meta["outputs"][0]["datatype"] == "FP32", meta

texts = np.array([["hello world"], ["edge inference"], ["ünïcödé"]], dtype=object)
binary = http.InferInput("text", [3, 1], "BYTES")
binary.set_data_from_numpy(texts)  # the client's default: binary tensor data
out = c.infer(model, [binary], request_id="r1")
e = out.as_numpy("embedding")
assert e.shape == (3, 384) and e.dtype == np.float32, (e.shape, e.dtype)
assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-4), np.linalg.norm(e, axis=1)
assert out.get_response()["id"] == "r1", out.get_response()

as_json = c.infer(model, [binary], outputs=[http.InferRequestedOutput("embedding", binary_data=False)])
assert np.array_equal(as_json.as_numpy("embedding"), e), "JSON and binary outputs differ"
plain = http.InferInput("text", [3, 1], "BYTES")
plain.set_data_from_numpy(texts, binary_data=False)
assert np.array_equal(c.infer(model, [plain]).as_numpy("embedding"), e), "JSON and binary inputs differ"

# Compressed both ways, as the client offers: its request body gzip or deflate, and the
# answer in the coding it asks for.
for request_coding, response_coding in [("gzip", "deflate"), ("deflate", "gzip")]:
    z = c.infer(
        model,
        [binary],
        request_compression_algorithm=request_coding,
        response_compression_algorithm=response_coding,
    )
    assert np.array_equal(z.as_numpy("embedding"), e), f"{request_coding}/{response_coding} differ"

for call, status, words in [
    (lambda: c.infer("no-such-model", [binary]), "404", "not served"),
    (lambda: c.infer(model, [http.InferInput("txt", [1], "BYTES")]), "400", "txt"),
]:
    try:
        call()
        sys.exit(f"no error where {status} was expected")
    except InferenceServerException as ex:
        assert ex.status() == status and words in ex.message(), (ex.status(), ex.message())
print("tritonclient http: ok", e[0, :3])
