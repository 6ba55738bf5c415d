"""qwen-code's OAuth account: its credentials file and the tokens refreshed from it."""
