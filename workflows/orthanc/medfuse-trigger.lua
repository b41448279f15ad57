-- medfuse trigger for Orthanc: run a medfuse workflow when a study becomes stable.
--
-- Orthanc calls OnStableStudy once no new instance arrived in a study for
-- "StableAge" seconds. This script starts, in the background,
--
--     medfuse workflow run <workflow file> --study <StudyInstanceUID> --wait 3600 --json
--
-- and returns at once, so Orthanc's Lua thread is never blocked by a fusion.
--
-- Configuration (environment of the Orthanc process, e.g. a systemd drop-in):
--   MEDFUSE_WORKFLOW     the workflow file (required; the trigger does nothing without it)
--   MEDFUSE_BIN          the medfuse executable (default: medfuse on PATH)
--   MEDFUSE_TRIGGER_LOG  where medfuse's JSON log lines go (default /var/log/medfuse/trigger.log)
--
-- Loop guard: storing the fused series into the study makes the study
-- stable again. When the series updated last in the study is medfuse output
-- (its SeriesDescription says "medfuse"), this script does not call medfuse.
-- medfuse guards a second time on its own: its ledger excludes the series it
-- produced and never fuses an input set twice.

local MEDFUSE = os.getenv('MEDFUSE_BIN') or 'medfuse'
local WORKFLOW = os.getenv('MEDFUSE_WORKFLOW')
local LOG = os.getenv('MEDFUSE_TRIGGER_LOG') or '/var/log/medfuse/trigger.log'

local function shellQuote(text)
   return "'" .. string.gsub(text, "'", "'\\''") .. "'"
end

local function isMedfuseOutput(series)
   local description = series['MainDicomTags']['SeriesDescription'] or ''
   return string.find(string.lower(description), 'medfuse', 1, true) ~= nil
end

local function lastUpdatedSeries(studyId)
   local newest = nil
   for _, series in ipairs(ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))) do
      if newest == nil or (series['LastUpdate'] or '') > (newest['LastUpdate'] or '') then
         newest = series
      end
   end
   return newest
end

function OnStableStudy(studyId, tags, metadata)
   if WORKFLOW == nil or WORKFLOW == '' then
      print('medfuse trigger: MEDFUSE_WORKFLOW is not set; nothing to do')
      return
   end
   local uid = tags['StudyInstanceUID'] or ''
   if not string.match(uid, '^[0-9.]+$') then
      print('medfuse trigger: study ' .. studyId .. ' has no valid StudyInstanceUID; ignored')
      return
   end
   local newest = lastUpdatedSeries(studyId)
   if newest ~= nil and isMedfuseOutput(newest) then
      print('medfuse trigger: study ' .. uid .. ' last received medfuse output; not triggering (loop guard)')
      return
   end
   local command = string.format('%s workflow run %s --study %s --wait 3600 --json >> %s 2>&1 &',
                                 shellQuote(MEDFUSE), shellQuote(WORKFLOW), uid, shellQuote(LOG))
   print('medfuse trigger: study ' .. uid .. ' is stable; starting medfuse')
   os.execute(command)
end
