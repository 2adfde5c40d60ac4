//! Echo backends: answer every request as fast as the socket allows, so the backend is
//! never what a benchmark measures. Each read is parsed for all the complete requests it
//! holds and their answers go out in one write (Dubbo and Thrift multiplex; HTTP/1.1
//! keeps connections alive and answers pipelined requests in order).

use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::proto::{self, Protocol};

/// Binds every address (port 0 picks a free one) and returns the listeners with the
/// addresses they got.
pub async fn bind(addrs: &[SocketAddr]) -> std::io::Result<Vec<(TcpListener, SocketAddr)>> {
    let mut out = Vec::with_capacity(addrs.len());
    for a in addrs {
        let l = TcpListener::bind(a).await?;
        let local = l.local_addr()?;
        out.push((l, local));
    }
    Ok(out)
}

/// Serves `protocol` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, protocol: Protocol) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            // A connection ends on EOF or on an error; either way there is nothing to report.
            let _ = connection(stream, protocol).await;
        });
    }
}

async fn connection(mut stream: TcpStream, protocol: Protocol) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut out = Vec::with_capacity(16 * 1024);
    let dubbo_body = proto::dubbo_reply_body();
    let thrift_result = proto::thrift_echo_result("hello");
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        out.clear();
        loop {
            let used = match protocol {
                Protocol::Dubbo => match proto::dubbo_frame_at(&buf) {
                    Ok(Some(f)) => {
                        if proto::dubbo_wants_reply(&buf) {
                            if f.event {
                                proto::dubbo_heartbeat_reply(&mut out, f.id);
                            } else {
                                proto::dubbo_reply(&mut out, f.id, &dubbo_body);
                            }
                        }
                        f.len
                    }
                    Ok(None) => break,
                    Err(_) => return Ok(()),
                },
                Protocol::Thrift => match proto::thrift_frame_at(&buf) {
                    Ok(Some(t)) => {
                        if t.kind == 1 {
                            let seqid = t.frame.id as u32 as i32;
                            proto::thrift_reply(
                                &mut out,
                                t.transport,
                                t.name,
                                seqid,
                                &thrift_result,
                            );
                        }
                        t.frame.len
                    }
                    Ok(None) => break,
                    Err(_) => return Ok(()),
                },
                Protocol::Http => match proto::http_message_at(&buf) {
                    Ok(Some(f)) => {
                        out.extend_from_slice(proto::HTTP_REPLY);
                        f.len
                    }
                    Ok(None) => break,
                    Err(_) => return Ok(()),
                },
            };
            buf.advance(used);
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
    }
}
