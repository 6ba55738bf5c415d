"""OpenAI's Responses API (`/v1/responses`): request translation, answer and stream
translation."""
