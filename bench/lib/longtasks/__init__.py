"""The long-context task suite (bench/tasks.py): generated tasks with ground truth, their token
prompts, the chunked KV round trip, greedy answers, and answer statistics."""
