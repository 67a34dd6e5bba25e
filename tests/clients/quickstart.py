"""The js-chat-server quickstart, as an existing bot would write it: connect, keep the token,
ping, chat. Used by tests/dropin.rs to show such clients work against relaychat unchanged."""
import asyncio, json, sys
import websockets

async def main(url):
    async with websockets.connect(url) as ws:
        token = None
        async for raw in ws:
            msg = json.loads(raw)
            print(msg["type"], msg.get("text", ""))
            if msg["type"] == "session-token":
                token = msg["token"]
                await ws.send(json.dumps({"type": "ping", "token": token}))
            elif msg["type"] == "pong":
                await ws.send(json.dumps({"type": "chat", "token": token, "content": "hello from python"}))
            elif msg["type"] == "chat" and msg["text"] == "hello from python":
                return

asyncio.run(asyncio.wait_for(main(sys.argv[1]), 10))
