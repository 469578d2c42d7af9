"""SQuAD v1.1 exact match and F1 (official normalisation, best reference) as a local ``evaluate`` module."""

import datasets
import evaluate

from pipeline.evaluation.metrics import squad


class Squad(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="SQuAD v1.1 exact match and token F1 ×100 with the official answer normalisation.",
            citation="Rajpurkar et al., 2016. SQuAD: 100,000+ Questions for Machine Comprehension of Text.",
            inputs_description="predictions: list of str; references: list of lists of str (one or more each).",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions: list[str], references: list[list[str]]) -> dict[str, float]:
        return squad(predictions, references)
