"""Notifications: the webhooks a finished submission owes, sent from the durable outbox.

``notify.sender`` drains the outbox (``storage.webhooks``) on threads of its own and
``notify.post`` makes each signed POST by a total deadline. Nothing here touches the GPU: the
worker process runs a sender beside its deliveries (``worker.batch``), and would run the same
sender in a process of its own just as well.
"""
