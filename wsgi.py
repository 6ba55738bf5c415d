from qwenproxy import create_app

app = create_app()
