-- chatgate usage metering (SPEC section 11): the dashboard's tables that
-- chatgate writes usage into, and the Row Level Security that lets a member
-- read only their own organization's rows. Apply it as a Supabase migration
-- (`supabase migration new usage_metering`, paste, `supabase db push`) or
-- with psql as the `postgres` role. Safe to apply again: every statement is
-- idempotent. Relies on Supabase's roles `anon`, `authenticated`,
-- `service_role` and on `auth.uid()`.

create extension if not exists pgcrypto;  -- gen_random_uuid() before PG 13

-- The seed's tables, as the dashboard knows them; left alone when present.
create table if not exists public.organizations (
  id uuid primary key default gen_random_uuid(),
  name text not null,
  domain text unique,
  plan_type text not null default 'free',
  librechat_config jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create table if not exists public.profiles (
  id uuid primary key,                 -- auth.users.id
  organization_id uuid references public.organizations (id) on delete set null,
  email text,
  full_name text,
  role text not null default 'member',
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index if not exists profiles_organization_id_idx on public.profiles (organization_id);

-- One row per (organization, user, UTC day); chatgate adds to it.
-- No foreign keys on purpose: a count for a user or organization deleted
-- meanwhile must not block the batches behind it.
create table if not exists public.usage_metrics (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null,
  user_id uuid not null,
  date date not null,
  tokens_used bigint not null default 0,
  cost_usd numeric(20, 9) not null default 0,
  message_count bigint not null default 0,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint usage_metrics_org_user_date_key unique (organization_id, user_id, date)
);
create index if not exists usage_metrics_org_date_idx on public.usage_metrics (organization_id, date);
create index if not exists usage_metrics_user_date_idx on public.usage_metrics (user_id, date);

-- One row per LibreChat conversation.
create table if not exists public.chat_sessions (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null,
  organization_id uuid not null,
  librechat_session_id text not null,  -- LibreChat's conversationId
  model_used text,
  session_metadata jsonb not null default '{}'::jsonb,  -- {"messages", "tokens", "endpoint"}
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint chat_sessions_librechat_session_id_key unique (librechat_session_id)
);
create index if not exists chat_sessions_org_created_idx on public.chat_sessions (organization_id, created_at desc);
create index if not exists chat_sessions_user_idx on public.chat_sessions (user_id);

-- Batches chatgate has applied: a batch sent again after a lost commit is
-- recognised by its id and applied once.
create table if not exists public.usage_batches (
  id text primary key,
  replica text not null,
  records bigint not null default 0,
  applied_at timestamptz not null default now()
);
create index if not exists usage_batches_applied_at_idx on public.usage_batches (applied_at);

-- Row Level Security: members read their organization's rows; nobody but
-- the service role (which bypasses RLS) and the tables' owner (chatgate's
-- `postgres` connection) writes.
create or replace function public.current_organization_id() returns uuid
  language sql stable security definer set search_path = public
  as $$ select organization_id from public.profiles where id = auth.uid() $$;
revoke all on function public.current_organization_id() from public;
grant execute on function public.current_organization_id() to authenticated, service_role;

alter table public.organizations enable row level security;
alter table public.profiles enable row level security;
alter table public.usage_metrics enable row level security;
alter table public.chat_sessions enable row level security;
alter table public.usage_batches enable row level security;

drop policy if exists "members read their organization" on public.organizations;
create policy "members read their organization" on public.organizations
  for select to authenticated using (id = public.current_organization_id());

drop policy if exists "users read their profile" on public.profiles;
create policy "users read their profile" on public.profiles
  for select to authenticated using (id = auth.uid());

drop policy if exists "members read their organization's usage" on public.usage_metrics;
create policy "members read their organization's usage" on public.usage_metrics
  for select to authenticated using (organization_id = public.current_organization_id());

drop policy if exists "members read their organization's chat sessions" on public.chat_sessions;
create policy "members read their organization's chat sessions" on public.chat_sessions
  for select to authenticated using (organization_id = public.current_organization_id());

-- Supabase grants every table to anon and authenticated by default; RLS
-- already refuses what no policy allows, and these revokes say it twice.
revoke insert, update, delete, truncate on public.usage_metrics, public.chat_sessions from anon, authenticated;
revoke all on public.usage_batches from anon, authenticated;
grant select on public.usage_metrics, public.chat_sessions to authenticated;
grant all on public.usage_metrics, public.chat_sessions, public.usage_batches to service_role;
