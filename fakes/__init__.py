"""Real servers on 127.0.0.1 that play the service's dependencies: the OpenAI upstream, ChatGPT's
backend-api and a TCP proxy that can cut PostgreSQL. The tests and the benchmark both use them."""
