"""The model figures an ingress replica reports in `/v1/stats`."""

from __future__ import annotations

from collections import Counter, OrderedDict, defaultdict

from serve_app.stylizer import InferenceInfo


class ModelFigures:
    """What this ingress replica saw of the Stylizer replicas' work."""

    def __init__(self, remember_batches: int = 4096):
        self.loads: dict[str, int] = {}
        self.images = 0
        self.batch_sizes: Counter[int] = Counter()
        self.inference_ms: defaultdict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        self.queue_ms_total = 0.0
        self.max_batch_size: int | None = None
        self._seen_batches: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._remember = remember_batches

    def record(self, style: str, info: InferenceInfo) -> None:
        self.loads[info.replica] = info.loads
        self.images += 1
        self.max_batch_size = info.max_batch_size
        self.queue_ms_total += info.queue_ms
        self.inference_ms[style][0] += 1
        self.inference_ms[style][1] += info.inference_ms / info.group_size
        batch = (info.replica, info.batch_id)
        if batch not in self._seen_batches:
            self._seen_batches[batch] = None
            self.batch_sizes[info.batch_size] += 1
            if len(self._seen_batches) > self._remember:
                self._seen_batches.popitem(last=False)

    def to_dict(self) -> dict:
        batches = sum(self.batch_sizes.values())
        return {
            "replicas_seen": len(self.loads),
            "loads": sum(self.loads.values()),
            "images": self.images,
            "batches": batches,
            "batch_sizes": dict(sorted(self.batch_sizes.items())),
            "mean_batch_size": (self.images / batches) if batches else 0.0,
            "max_batch_size": self.max_batch_size,
            "mean_queue_ms": self.queue_ms_total / self.images if self.images else 0.0,
            "inference_ms_per_image": {
                style: total / count for style, (count, total) in self.inference_ms.items()
            },
        }
