//! READY maps answered from their shared encoding, for both services' map calls.
//!
//! tonic encodes every answer into a fresh buffer, so each `GetEmbeddingMap` of a READY map would
//! copy the whole map (about 2 MB at 100k points), and a client that opens many calls and never
//! reads them would hold a copy per call. This layer, in front of the generated service, answers
//! the get call of a READY map itself: the response body is a 5-byte gRPC frame header followed by
//! the map's encoded bytes, shared by reference, then the OK trailers. Everything else (a map still
//! computing or failed, an error, a compressed request, the watch streams) passes through to tonic.
//! Both services' map requests are one message shape: `bool omit_points = 1`.

use std::{
    marker::PhantomData,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame};
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use prost::Message;
use tonic::{Status, body::Body, server::NamedService};
use tower::{Layer, Service, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Largest map request accepted: the message is one flag.
pub const MAP_REQUEST_BYTES: usize = 1024;

/// How long a map request's few bytes may take to arrive.
const REQUEST_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// A READY answer message encoded once with its points and once without, shared by every answer
/// until the map changes. Both services keep their READY map so: the whole message is never copied
/// per answer, and the few answers built as messages decode it.
#[derive(Debug)]
pub struct SharedAnswer<M> {
    with_points: Bytes,
    without_points: Bytes,
    message: PhantomData<fn() -> M>,
}

impl<M: Message + Default> SharedAnswer<M> {
    /// `without_points` is `with_points` less its bulk (the points, per-point columns).
    pub fn new(with_points: &M, without_points: &M) -> Self {
        SharedAnswer {
            with_points: with_points.encode_to_vec().into(),
            without_points: without_points.encode_to_vec().into(),
            message: PhantomData,
        }
    }

    /// The encoding; cloning it shares the bytes.
    pub fn encoded(&self, omit_points: bool) -> Bytes {
        if omit_points { self.without_points.clone() } else { self.with_points.clone() }
    }

    /// The message decoded from its encoding.
    pub fn decode(&self, omit_points: bool) -> M {
        // Encoded by `new` from a valid message, so it decodes.
        M::decode(self.encoded(omit_points)).unwrap_or_default()
    }

    /// An answer as pieces whose concatenation is the message: the shared encoding, then
    /// `changing`'s few bytes (a refresh's progress) unless it has none set. Protobuf merges
    /// concatenated messages field by field, so `changing`'s fields are set in the answer.
    pub fn with(&self, omit_points: bool, changing: &M) -> Vec<Bytes> {
        let mut pieces = vec![self.encoded(omit_points)];
        let changing = changing.encode_to_vec();
        if !changing.is_empty() {
            pieces.push(changing.into());
        }
        pieces
    }
}

/// Where the encoded READY answer comes from.
pub trait ReadyMaps: Clone + Send + Sync + 'static {
    /// The whole encoded reply message while a map is READY (with or without its points), as
    /// pieces whose concatenation is the message; `None` lets the service answer; an error is the
    /// answer (so a slow upstream is not asked twice).
    fn encoded_ready(&self, omit_points: bool) -> impl Future<Output = Result<Option<Vec<Bytes>>, Status>> + Send;
}

/// Both services' map request messages.
#[derive(Clone, PartialEq, prost::Message)]
struct MapRequest {
    #[prost(bool, tag = "1")]
    omit_points: bool,
}

#[derive(Clone)]
pub struct ReadyAnswersLayer<M> {
    maps: M,
    /// The unary call's path (`/package.Service/Method`).
    get_path: String,
    max_message_bytes: usize,
}

impl<M: ReadyMaps> ReadyAnswersLayer<M> {
    /// For the service named `service`, whose unary map call is `get`.
    pub fn new(maps: M, service: &str, get: &str, max_message_bytes: usize) -> Self {
        ReadyAnswersLayer { maps, get_path: format!("/{service}/{get}"), max_message_bytes }
    }
}

impl<S, M: Clone> Layer<S> for ReadyAnswersLayer<M> {
    type Service = ReadyAnswers<S, M>;

    fn layer(&self, inner: S) -> ReadyAnswers<S, M> {
        ReadyAnswers { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub struct ReadyAnswers<S, M> {
    inner: S,
    layer: ReadyAnswersLayer<M>,
}

impl<S: NamedService, M> NamedService for ReadyAnswers<S, M> {
    const NAME: &'static str = S::NAME;
}

impl<S, M, B> Service<Request<B>> for ReadyAnswers<S, M>
where
    M: ReadyMaps,
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        // Readiness is awaited on the clone that serves the call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        let path = request.uri().path();
        if path != self.layer.get_path {
            return Box::pin(inner.oneshot(request.map(Body::new)));
        }
        let layer = self.layer.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let read = tokio::time::timeout(REQUEST_WITHIN, Limited::new(body, MAP_REQUEST_BYTES + 5).collect()).await;
            let collected = match read {
                Ok(Ok(collected)) => collected,
                Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
                    return Ok(
                        Status::resource_exhausted("the request is larger than a map request can be").into_http()
                    );
                }
                Ok(Err(error)) => {
                    return Ok(Status::invalid_argument(format!("reading the request: {error}")).into_http());
                }
                Err(_) => return Ok(Status::deadline_exceeded("the request did not arrive in time").into_http()),
            };
            let bytes = collected.to_bytes();
            let answer = match omit_points(&bytes) {
                Some(omit) => match layer.maps.encoded_ready(omit).await {
                    Ok(answer) => answer,
                    Err(status) => return Ok(status.into_http()),
                },
                None => None,
            };
            let answer =
                answer.filter(|pieces| pieces.iter().map(Bytes::len).sum::<usize>() <= layer.max_message_bytes);
            match answer {
                Some(message) => Ok(grpc_answer(message)),
                // Not READY any more, compressed, or malformed: tonic answers (and explains).
                None => inner.oneshot(Request::from_parts(parts, Body::new(Full::new(bytes)))).await,
            }
        })
    }
}

/// The request's `omit_points`, if it is one uncompressed, well-formed gRPC message.
fn omit_points(frame: &[u8]) -> Option<bool> {
    let (&[compressed, l0, l1, l2, l3], message) = frame.split_first_chunk::<5>()?;
    if compressed != 0 || u32::from_be_bytes([l0, l1, l2, l3]) as usize != message.len() {
        return None;
    }
    MapRequest::decode(message).ok().map(|r| r.omit_points)
}

/// One gRPC message (its `pieces`, shared, not copied) and the OK trailers.
fn grpc_answer(pieces: Vec<Bytes>) -> Response<Body> {
    let mut header = BytesMut::with_capacity(5);
    header.put_u8(0);
    header.put_u32(pieces.iter().map(Bytes::len).sum::<usize>() as u32);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = std::iter::once(Frame::data(header.freeze()))
        .chain(pieces.into_iter().map(Frame::data))
        .chain([Frame::trailers(trailers)]);
    let body = StreamBody::new(stream::iter(frames.map(Ok::<_, std::convert::Infallible>)));
    let mut response = Response::new(Body::new(body));
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut frame = vec![0];
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(message);
        frame
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Answer {
        #[prost(uint32, repeated, tag = "1")]
        points: Vec<u32>,
        #[prost(uint32, tag = "2")]
        progress: u32,
    }

    #[test]
    fn a_shared_answer_is_encoded_once_and_takes_the_changing_fields() {
        let map = Answer { points: vec![1, 2, 3], progress: 0 };
        let shared = SharedAnswer::new(&map, &Answer::default());
        let plain = shared.with(false, &Answer::default());
        assert_eq!(plain.len(), 1, "nothing changing, nothing appended");
        assert_eq!(plain[0].as_ptr(), shared.encoded(false).as_ptr(), "the shared bytes, not a copy");
        let refreshing = shared.with(false, &Answer { points: Vec::new(), progress: 7 });
        assert_eq!(Answer::decode(refreshing.concat().as_slice()).unwrap(), Answer { progress: 7, ..map.clone() });
        assert_eq!(shared.decode(false), map);
        assert_eq!(shared.decode(true), Answer::default());
    }

    #[test]
    fn only_well_formed_uncompressed_requests_are_answered_here() {
        let omit = MapRequest { omit_points: true }.encode_to_vec();
        assert_eq!(omit_points(&framed(&omit)), Some(true));
        assert_eq!(omit_points(&framed(&[])), Some(false));
        let mut compressed = framed(&omit);
        compressed[0] = 1;
        assert_eq!(omit_points(&compressed), None);
        assert_eq!(omit_points(&framed(&omit)[..5]), None, "length disagrees with the body");
        assert_eq!(omit_points(&[0, 0]), None);
        assert_eq!(omit_points(&framed(&[0xff, 0xff])), None, "not a message");
    }
}
