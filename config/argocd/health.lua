-- Argo CD health check for Weft's MeshRoute, MeshFunction, RedisProxy and MeshPolicy (mesh.weft.dev).
-- Weft's status follows kstatus (sigs.k8s.io/cli-utils): Stalled=True is Degraded,
-- Ready=True at the current generation is Healthy, anything else is Progressing. A function
-- scaled to zero is Healthy (Ready=True, reason ScaledToZero): it serves, its first call
-- starts a pod. Argo CD's Suspended means paused by a user and would mark every idle app
-- Suspended, so it is not used. Warning=True (a shadowed rule, re-homed Redis keys) keeps
-- the health and is named in the message.
local hs = { status = "Progressing", message = "Waiting for the Weft controller to write status" }
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= generation then
  hs.message = "Waiting for the Weft controller to observe generation " .. tostring(generation)
  return hs
end
local c = {}
for _, cond in ipairs(obj.status.conditions) do
  c[cond.type] = cond
end
local function current(cond)
  return cond ~= nil and (generation == nil or cond.observedGeneration == nil or cond.observedGeneration == generation)
end
local function describe(cond)
  local m = cond.reason or ""
  if cond.message ~= nil and cond.message ~= "" then
    m = m .. ": " .. cond.message
  end
  return m
end
if current(c.Stalled) and c.Stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(c.Stalled)
  return hs
end
if current(c.Ready) and c.Ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(c.Ready)
  if current(c.Warning) and c.Warning.status == "True" then
    hs.message = "Warning " .. describe(c.Warning) .. " (" .. hs.message .. ")"
  end
  return hs
end
if current(c.Reconciling) and c.Reconciling.status == "True" then
  hs.message = describe(c.Reconciling)
elseif current(c.Ready) then
  hs.message = describe(c.Ready)
end
return hs
