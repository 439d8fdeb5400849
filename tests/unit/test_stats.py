"""What an ingress replica reports of the Stylizer replicas' work."""

from serve_app.request_log import request_id_from, route_label
from serve_app.stats import ModelFigures
from serve_app.stylizer import InferenceInfo


def info(replica: str, batch_id: int, batch_size: int, loads: int = 2) -> InferenceInfo:
    return InferenceInfo(replica, batch_id, batch_size, batch_size, 1.0, 100.0, loads, 8)


def test_batches_are_counted_once_however_many_results_they_gave():
    figures = ModelFigures()
    for _ in range(4):
        figures.record("a", info("r1", 1, 4))
    figures.record("a", info("r2", 1, 1))
    report = figures.to_dict()
    assert report["images"] == 5 and report["batches"] == 2
    assert report["batch_sizes"] == {1: 1, 4: 1}
    assert report["loads"] == 4 and report["replicas_seen"] == 2
    assert report["mean_batch_size"] == 2.5
    assert report["inference_ms_per_image"]["a"] == (4 * 25.0 + 100.0) / 5


def test_memory_of_batches_is_bounded():
    figures = ModelFigures(remember_batches=10)
    for batch_id in range(100):
        figures.record("a", info("r", batch_id, 1))
    assert figures.to_dict()["batches"] == 100
    assert len(figures._seen_batches) <= 11


def test_request_ids_and_route_labels():
    assert request_id_from({"headers": [(b"x-request-id", b"abc")]}) == "abc"
    assert len(request_id_from({"headers": []})) == 36
    assert route_label("/v1/stylize") == "/v1/stylize"
    assert route_label("/static/app.js") == "/static"
    assert route_label("/wp-admin.php") == "other"
