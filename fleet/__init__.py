"""Running a fleet: the reconciler (``reconcile``), autoscaling (``scaling``) and the Prometheus
exporter KEDA scales on (``exporter``). No torch."""
