"""Forwards TCP connections on 127.0.0.1:PORT to a Unix socket, so HTTP tools that only speak TCP
(schemathesis) can reach Tandem's API socket. Usage: unix_proxy.py PORT SOCKET"""
import asyncio
import sys


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def handle(tcp_r, tcp_w, path):
    try:
        unix_r, unix_w = await asyncio.open_unix_connection(path)
    except OSError:
        tcp_w.close()
        return
    await asyncio.gather(pipe(tcp_r, unix_w), pipe(unix_r, tcp_w))


async def main(port, path):
    server = await asyncio.start_server(lambda r, w: handle(r, w, path), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
