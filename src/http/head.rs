//! HEAD, for every route and protocol: a HEAD request gets the answer GET would get,
//! with the body dropped by [`strip_body`] (the last step of every request, in
//! [`super::access_log::logged`]) and its length kept in `Content-Length`.
//!
//! hyper's HTTP/1 side would drop the body of an answer to HEAD by itself, but its
//! HTTP/2 side would send it as DATA frames, which curl (and so Nix) rejects as a
//! protocol error. Handlers therefore never look at the method to decide about the
//! body; the object handler only looks it up without opening it (see
//! `objects::dispatch`).

use hyper::body::Body as _;
use hyper::header;

use super::body::Body;
use super::Response;

/// Whether a request is a HEAD, whose answer goes through [`strip_body`].
pub fn is_head(method: &hyper::Method) -> bool {
    *method == hyper::Method::HEAD
}

/// Turns the answer to a GET into the answer to the HEAD: no body, the same length.
pub fn strip_body(resp: &mut Response) {
    if !resp.headers().contains_key(header::CONTENT_LENGTH) {
        if let Some(len) = resp.body().size_hint().exact() {
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, len.into());
        }
    }
    *resp.body_mut() = Body::Empty;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_length_stays_and_the_body_goes() {
        let mut resp = Response::new(Body::from("not found\n".to_owned()));
        strip_body(&mut resp);
        assert_eq!(resp.headers()[header::CONTENT_LENGTH], "10");
        assert!(resp.body().is_end_stream());

        let mut resp = Response::new(Body::from("x".to_owned()));
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, 1234.into());
        strip_body(&mut resp);
        assert_eq!(resp.headers()[header::CONTENT_LENGTH], "1234");
    }
}
