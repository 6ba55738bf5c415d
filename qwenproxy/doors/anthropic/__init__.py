"""Anthropic's Messages API (`/v1/messages`): request translation, answer and stream
translation."""
