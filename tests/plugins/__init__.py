"""Task types that exist only for tests, loaded through TASK_TYPE_PLUGINS."""
