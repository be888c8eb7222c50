"""Domain rules, one module per thing they own; used by the API and by the workers alike."""
