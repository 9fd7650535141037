"""Zipping: plan (pairs and merged weights), rewrite (one multi-task graph), report, extract."""
