"""The review service: reviewers drain the low-confidence topic; their decisions flow back to search and training."""
