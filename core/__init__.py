"""The shared base every stage stands on: settings, the error tree, the job type and its limits,
and what can be known about a model without loading it. It imports nothing of the project."""
