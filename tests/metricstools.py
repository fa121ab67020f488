"""Reading a Prometheus exposition in tests: parsed by prometheus_client's own
parser (which refuses a malformed one), as {(sample, labels): value}."""

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict:
    """{(sample name, ((label, value), ...)): value} of a text exposition, parsed by
    prometheus_client's own parser (which refuses a malformed one)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def by_labels(found: dict, name: str, *keys: str) -> dict:
    """{(values of ``keys``): value} of every sample of ``name``, summed over other labels."""
    out = {}
    for (sample, labels), v in found.items():
        if sample == name:
            labels = dict(labels)
            key = tuple(labels[k] for k in keys)
            out[key] = out.get(key, 0) + v
    return out


def exposition(registry) -> dict:
    return samples(generate_latest(registry).decode())


def label_values(found: dict) -> dict[str, set]:
    values = {}
    for _, labels in found:
        for label, v in labels:
            values.setdefault(label, set()).add(v)
    return values
