import openai


def test_smoke(start_proxy, fake):
    proxy = start_proxy()
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="anything")
    r = client.chat.completions.create(model="qwen-oauth:qwen3-coder-plus",
                                       messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "Hello from fake"
    s = client.chat.completions.create(model="qwen3-coder-plus", stream=True,
                                       messages=[{"role": "user", "content": "hi"}])
    text = "".join(c.choices[0].delta.content or "" for c in s if c.choices)
    assert text == "Hello from fake"
    print(proxy.output())
