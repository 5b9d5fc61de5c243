//! Supabase Auth as chatgate sees it: the session cookie the dashboard
//! writes (more to come: token verification, refresh, organization lookup).

pub mod cookie;
