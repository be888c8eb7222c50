"""Clients for services outside this one."""
