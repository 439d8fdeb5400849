# ruff: noqa
# fmt: off
# A BASELINE TO MEASURE AGAINST, not part of the service and not code to copy: a naive
# single-process Flask service (a global model, a dict cache keyed by MD5 of the upload,
# a fixed 256×256 resize, batches of up to 4 collected for up to 1 s by a background
# thread, PNG results as hex inside JSON). `python -m load_tests.bench` runs it on the
# mixed workload next to the service. Copied unchanged below this header from the
# project's reference material (its README: "ANIMEGAN_TS=/path/to/generator_torchscript.pt
# PORT=5055 python app.py"; the TorchScript file is the generator traced at 1×3×256×256;
# endpoint POST /transform, multipart field `image`). It needs flask (the dev extras).
# A Flask reference service, kept as a benchmark baseline;
# the model path comes from ANIMEGAN_TS and the port from PORT.
# not part of the project.
import os
import torch
import threading
import time
from PIL import Image
import numpy as np
from flask import Flask, request, jsonify
from io import BytesIO
import hashlib

app = Flask(__name__)
_model_cache = None
_result_cache = {}
_batch_queue = []
_batch_lock = threading.Lock()
_dispatch_event = threading.Event()
BATCH_SIZE = 4
MAX_WAIT_TIME = 1.0


def get_model():
    global _model_cache
    if _model_cache is None:
        _model_cache = torch.jit.load(os.environ.get("ANIMEGAN_TS", "animeganv2.pt"))
        _model_cache.eval()
    return _model_cache


def image_to_hash(img_bytes):
    return hashlib.md5(img_bytes).hexdigest()


def preprocess(image):
    image = image.convert("RGB").resize((256, 256))
    tensor = torch.tensor(np.array(image)).permute(2, 0, 1).float() / 255.0
    return tensor.unsqueeze(0)


def postprocess(tensor):
    img = tensor.squeeze().clamp(0, 1).numpy()
    img = (img * 255).astype(np.uint8)
    pil_img = Image.fromarray(np.transpose(img, (1, 2, 0)))
    buf = BytesIO()
    pil_img.save(buf, format="PNG")
    return buf.getvalue()


def batch_processor():
    while True:
        _dispatch_event.wait(timeout=MAX_WAIT_TIME)
        with _batch_lock:
            if len(_batch_queue) == 0:
                continue
            batch = _batch_queue[:BATCH_SIZE]
            del _batch_queue[:BATCH_SIZE]
            if len(_batch_queue) == 0:
                _dispatch_event.clear()
        try:
            model = get_model()
            inputs = torch.cat([item['input'] for item in batch], dim=0)
            with torch.no_grad():
                outputs = model(inputs)
            for i, item in enumerate(batch):
                result_img_data = postprocess(outputs[i:i + 1])
                item['future'].set_result(result_img_data)
                _result_cache[item['hash']] = result_img_data
        except Exception as e:
            for item in batch:
                item['future'].set_exception(e)


threading.Thread(target=batch_processor, daemon=True).start()


class FutureResult:
    def __init__(self):
        self.result = None
        self.exception = None
        self._event = threading.Event()

    def set_result(self, result):
        self.result = result
        self._event.set()

    def set_exception(self, exc):
        self.exception = exc
        self._event.set()

    def get(self, timeout=None):
        if not self._event.wait(timeout):
            raise TimeoutError("Request timed out")
        if self.exception:
            raise self.exception
        return self.result


@app.route("/transform", methods=["POST"])
def transform():
    input_image = request.files["image"].read()
    img_hash = image_to_hash(input_image)
    if img_hash in _result_cache:
        return jsonify({"image_base64": _result_cache[img_hash].hex()}), 200
    try:
        pil_img = Image.open(BytesIO(input_image))
        input_tensor = preprocess(pil_img)
    except Exception as e:
        return jsonify({"error": f"Invalid image: {str(e)}"}), 400
    future = FutureResult()
    with _batch_lock:
        _batch_queue.append({"hash": img_hash, "input": input_tensor, "future": future})
        _dispatch_event.set()
    try:
        output_image_data = future.get(timeout=10.0)
        return jsonify({"image_base64": output_image_data.hex()}), 200
    except TimeoutError:
        return jsonify({"error": "Processing timeout"}), 504
    except Exception as e:
        return jsonify({"error": str(e)}), 500


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")), threaded=True)
